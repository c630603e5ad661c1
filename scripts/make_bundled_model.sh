#!/usr/bin/env bash
# Reproduce the bundled model (engine/data/bundled-model, v25; v3, v4, v5, v7, v13, v15, v16, v17, v19, v21 and v24 on the way) with the project's own pipeline:
# Stockfish self-play -> whole-game data set -> an 18.8M-parameter Mistral-architecture model
# from scratch (configs/train/scratch-medium.yaml) = v3, then v3 trained further on set D
# (seed 20) = v4, then v4 trained further on sets E (its first 32,000 games), F, G and H
# (seeds 30, 40, 50, 51) = v5. Seeds are fixed. V4=0 stops after v3, V5=0 after v4.
#   bash scripts/make_bundled_model.sh [WORK_DIR]
# Rerunning continues where it stopped: self-play plays only missing games, training resumes
# from its newest checkpoint.
#
# v3 was made on the lent GPU machine in separate device calls (scripts/bundled_gpu.py: each
# self-play set is 480 s of 15 Stockfish workers, then one call builds, trains and evaluates
# every checkpoint). Those self-play calls stop on time, so a set is the index ranges its
# manifest.json lists; `--games N` with N = its highest game index plays those games plus
# the few (< 15 x 100) a worker had not reached when the clock stopped it.
# Earlier releases (v1, v2: configs/train/scratch-small.yaml, set A + set B) are described
# in the model card's history.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/bundled}
MC=${MISTRAL_CHESS:-.venv/bin/mistral-chess}
GAMES_10=${GAMES_10:-31518}   # set C (seed 10): v3 used the 31,011 games of indices < 31,518 its 480 s call finished
GAMES_11=${GAMES_11:-0}       # set D (seed 11): not made for v3 (0: skip)
STEPS=${STEPS:-1800}          # the schedule's length (cosine over 1,800 steps)
SHIP_STEP=${SHIP_STEP:-1500}  # v3 ships the step-1500 checkpoint: the GPU call's watchdog stopped training at step 1,700
mkdir -p "$W"
# Set A (kept from v1/v2): 35,000 games at 600 nodes, 2-4 random plies, seed 0 (18,147 distinct).
$MC dataset selfplay --config configs/dataset/selfplay.yaml --out "$W/selfplay" --games 35000 \
    seed=0 nodes=600 random_plies_min=2 random_plies_max=4 chunk_games=500
# Sets C and D: 600 nodes +-25% a game, 4-8 random plies, 20% of games from the arena's book lines.
for seed in 10 11; do
    n=$([ "$seed" = 10 ] && echo "$GAMES_10" || echo "$GAMES_11")
    [ "$n" -gt 0 ] || continue
    $MC dataset selfplay --config configs/dataset/selfplay.yaml --out "$W/selfplay-$seed" --games "$n" \
        seed=$seed nodes=600 nodes_jitter=0.25 random_plies_min=4 random_plies_max=8 book_fraction=0.2 chunk_games=100
done
SOURCES=(--source "$W/selfplay")
for seed in 10 11; do [ -d "$W/selfplay-$seed" ] && SOURCES+=(--source "$W/selfplay-$seed"); done
$MC dataset build --config configs/dataset/scratch-games.yaml "${SOURCES[@]}" --out "$W/scratch-games"
$MC train --config configs/train/scratch-medium.yaml data.path="$W/scratch-games" \
    train.output_dir="$W/run" train.max_steps="$STEPS" train.save_steps=300 eval.eval_steps=300 train.save_total_limit=0
# The shipped weights: the checkpoint of step SHIP_STEP as an engine-loadable folder.
PY=$(dirname "$MC")/python
# export_step RUN STEP: the checkpoint of STEP as an engine-loadable folder RUN/bundled.
export_step() {
    "$PY" -c "import sys; from pathlib import Path; from training.modeling import export_checkpoint; \
run = Path(sys.argv[1]); export_checkpoint(run, run / 'checkpoints' / f'step-{int(sys.argv[2]):07d}', run / 'bundled')" "$1" "$2"
}
export_step "$W/run" "$SHIP_STEP"
echo "v3: $W/run/bundled"

# v4: v3 trained on set D (130,643 games, seed 20), lr 3e-4 cosine over 4,000 steps; v4 ships
# the step-3,000 checkpoint, the lowest validation loss. Set D comes from the repository's
# history when it is there (datasets/README.md), else it is played again (the games of index
# < 130,691, which includes the 48 the original time-limited run had not finished).
# history_set NAME SEED GAMES: the set NAME from the repository's history into $W/NAME, else
# played again (the games of index < GAMES: a time-limited run may have skipped a few of them).
history_set() {
    local d="$W/$1"
    [ -d "$d" ] && return 0
    local c
    c=$(git log -1 --diff-filter=A --format=%H -- "datasets/$1/manifest.json")
    if [ -n "$c" ]; then
        mkdir -p "$W/history" && git archive "$c" "datasets/$1" | tar -x -C "$W/history"
        mv "$W/history/datasets/$1" "$d"
    else
        $MC dataset selfplay --config configs/dataset/selfplay.yaml --out "$d" --games "$3" seed="$2" nodes=600 \
            nodes_jitter=0.25 random_plies_min=4 random_plies_max=8 book_fraction=0.2 chunk_games=500 "${@:4}"
    fi
}
if [ "${V4:-1}" = 1 ]; then
    D="$W/selfplay-20"
    history_set selfplay-20 20 130691
    $MC dataset build --config configs/dataset/scratch-games.yaml --source "$D" --out "$W/scratch-games-d"
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/scratch-games-d" train.output_dir="$W/run-v4" \
        model.init=pretrained model.path="$W/run/bundled" model.tokenizer= train.learning_rate=3e-4 \
        train.warmup_steps=100 train.max_steps=4000 train.save_steps=500 eval.eval_steps=500 train.save_total_limit=0
    export_step "$W/run-v4" 3000
    echo "v4: $W/run-v4/bundled"
fi

# v5: v4 trained on 134,152 new games (set E's games of index < 32,000, and sets F, G, H), lr 1.5e-4
# cosine over 1,500 steps; v5 ships the step-1,000 checkpoint: in the GPU call every checkpoint
# played 40 games against v4 and step 1,000 scored best (FINAL_PICK=score:bundled; the model card).
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ]; then
    history_set selfplay-30 30 62517
    history_set selfplay-40 40 36031
    history_set selfplay-50 50 34050
    history_set selfplay-51 51 32536
    E32="$W/selfplay-30-first32k"
    mkdir -p "$E32"
    for f in "$W"/selfplay-30/games-*.parquet; do
        first=$(basename "$f" | cut -d- -f2)
        if [ "$((10#$first))" -lt 32000 ]; then cp -n "$f" "$E32/"; fi
    done
    $MC dataset build --config configs/dataset/scratch-games.yaml --source "$E32" --source "$W/selfplay-40" \
        --source "$W/selfplay-50" --source "$W/selfplay-51" --out "$W/scratch-games-v5"
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/scratch-games-v5" train.output_dir="$W/run-v5" \
        model.init=pretrained model.path="$W/run-v4/bundled" model.tokenizer= train.learning_rate=1.5e-4 \
        train.warmup_steps=50 train.max_steps=1500 train.save_steps=250 eval.eval_steps=250 train.save_total_limit=0
    export_step "$W/run-v5" 1000
    echo "v5: $W/run-v5/bundled"
fi
# v7: v5 as shipped (int8, a scale per 64 weights) grown to 20 layers with `grow-model` (36.0M
# parameters that compute what v5 does), trained on sets E (all of it), F, I and J (203,866 games,
# seeds 30, 40, 60, 70), lr 3e-4 cosine over 1,500 steps with 100 warm-up steps; v7 ships the
# step-1,000 checkpoint (the best of its checkpoints in 40 games each against v5, FINAL_PICK=score:bundled).
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ]; then
    history_set selfplay-60 60 71029
    history_set selfplay-70 70 35917
    $MC export-int8 "$W/run-v5/bundled" "$W/v5-int8" --group 64
    $MC grow-model "$W/v5-int8" "$W/v7-grown" --layers 20
    $MC dataset build --config configs/dataset/scratch-games.yaml --source "$W/selfplay-30" --source "$W/selfplay-40" \
        --source "$W/selfplay-60" --source "$W/selfplay-70" --out "$W/scratch-games-v7"
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/scratch-games-v7" train.output_dir="$W/run-v7" \
        model.init=pretrained model.path="$W/v7-grown" model.tokenizer= train.learning_rate=3e-4 \
        train.warmup_steps=100 train.max_steps=1500 train.save_steps=250 eval.eval_steps=250 train.save_total_limit=0
    export_step "$W/run-v7" 1000
    echo "v7: $W/run-v7/bundled"
fi
# v13: v7 as shipped (int8) trained on board windows (configs/dataset/scratch-windows.yaml: every
# 16 plies the PGN restarts from the position's FEN) of sets K, L and M (200,211 games, seeds 80,
# 90, 100), in two phases on the lent GPU machine (the model card, "v13"). Phase 1: 4 windows a
# game, lr 3e-4 cosine over 1,500 steps with 100 warm-up steps. Phase 2: phase 1's final model,
# every window (examples.seed=1 for the bookkeeping of a second build), lr 1.5e-4 cosine over
# 2,000 steps, 50 warm-up steps; v13 ships phase 2's final model, as int8 with a scale per 64
# weights. The model folders carry engine_prompt.yaml (window_plies: 16), which the engine follows.
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ]; then
    history_set selfplay-80 80 29531
    history_set selfplay-90 90 58537
    history_set selfplay-100 100 113536
    $MC export-int8 "$W/run-v7/bundled" "$W/v7-int8" --group 64
    KLM=(--source "$W/selfplay-80" --source "$W/selfplay-90" --source "$W/selfplay-100")
    $MC dataset build --config configs/dataset/scratch-windows.yaml "${KLM[@]}" --out "$W/windows-v13a"
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/windows-v13a" train.output_dir="$W/run-v13a" \
        model.init=pretrained model.path="$W/v7-int8" model.tokenizer= train.learning_rate=3e-4 \
        train.warmup_steps=100 train.max_steps=1500 train.save_steps=500 eval.eval_steps=500 train.save_total_limit=0
    $MC dataset build --config configs/dataset/scratch-windows.yaml "${KLM[@]}" --out "$W/windows-v13b" \
        examples.positions_per_game=0 examples.seed=1
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/windows-v13b" train.output_dir="$W/run-v13b" \
        model.init=pretrained model.path="$W/run-v13a" model.tokenizer= train.learning_rate=1.5e-4 \
        train.warmup_steps=50 train.max_steps=2000 train.save_steps=500 eval.eval_steps=500 train.save_total_limit=0
    $MC export-int8 "$W/run-v13b" "$W/v13-int8" --group 64
    echo "v13: $W/v13-int8"
fi
# v15: v13 as shipped, its tokenizer rewritten to read each FEN board one token a square
# (model.tokenizer_board_squares: token ids unchanged), trained on every board window of sets F,
# K, L and M (235,777 games, seeds 40, 80, 90 and 100), lr 2e-4 with 200 warm-up steps, cosine
# over 6,000 steps, on the lent GPU machine (the model card, "v15"). The GPU calls stopped the run
# at step 4,600; v15 ships the step-4,000 checkpoint (the lowest validation loss of those saved),
# as int8 with a scale per 64 weights.
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ]; then
    history_set selfplay-40 40 36031
    FKLM=(--source "$W/selfplay-40" --source "$W/selfplay-80" --source "$W/selfplay-90" --source "$W/selfplay-100")
    $MC dataset build --config configs/dataset/scratch-windows.yaml "${FKLM[@]}" --out "$W/windows-v15" \
        examples.positions_per_game=0
    # The schedule is 6,000 steps long; the process stops itself once the step-4,000 checkpoint is saved.
    if [ ! -d "$W/run-v15/checkpoints/step-0004000" ]; then
        $MC train --config configs/train/scratch-medium.yaml data.path="$W/windows-v15" train.output_dir="$W/run-v15" \
            model.init=pretrained model.path="$W/v13-int8" model.tokenizer= model.tokenizer_board_squares=true \
            train.learning_rate=2e-4 train.warmup_steps=200 train.max_steps=6000 train.save_steps=1000 \
            eval.eval_steps=1000 train.save_total_limit=0 train.stop_after_steps=4000 ||
            [ -d "$W/run-v15/checkpoints/step-0004000" ]
    fi
    export_step "$W/run-v15" 4000
    $MC export-int8 "$W/run-v15/bundled" "$W/v15-int8" --group 64
    echo "v15: $W/v15-int8"
fi
# anneal TAG FROM PER_GAME SOURCE_ARGS...: the int8 model FROM trained further on PER_GAME board
# windows a game (0: every window) of the sources, lr 1e-4 with 100 warm-up steps, cosine to 0 over
# ANNEAL_STEPS (3,600) steps, a checkpoint every ANNEAL_SAVE (400), stored as int8 with a scale per 64
# weights in $W/TAG-int8: the final model (v16, v17), or with ANNEAL_SHIP=STEP the checkpoint of that
# step (v19). ANNEAL_BUILD and ANNEAL_TRAIN: more build and training words. A run with
# qat.int4_modules in ANNEAL_TRAIN (v25) saves its folder in the int8/int4 store already: that folder
# is the model, with no export-int8.
anneal() {
    local tag=$1 from=$2 per_game=$3 steps=${ANNEAL_STEPS:-3600} ship=${ANNEAL_SHIP:-} save=${ANNEAL_SAVE:-400}
    local out="$W/run-$tag"
    local -
    set -f  # the extra words below are split but never globbed ("qat.int4_modules=[...]")
    shift 3
    # shellcheck disable=SC2086  # ANNEAL_BUILD: e.g. dedupe=true (v21); ANNEAL_TRAIN: e.g. qat.int4_modules=[...] (v25)
    $MC dataset build --config configs/dataset/scratch-windows.yaml "$@" --out "$W/windows-$tag" \
        examples.positions_per_game="$per_game" ${ANNEAL_BUILD:-}
    # shellcheck disable=SC2086
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/windows-$tag" train.output_dir="$out" \
        model.init=pretrained model.path="$from" model.tokenizer= train.learning_rate=1e-4 \
        train.warmup_steps=100 train.min_lr_ratio=0.0 train.max_steps="$steps" train.save_steps="$save" \
        eval.eval_steps="$save" train.save_total_limit=0 ${ANNEAL_TRAIN:-}
    if [ -n "$ship" ]; then
        export_step "$out" "$ship"
        out="$out/bundled"
    fi
    if [ -f "$out/model.safetensors" ]; then
        $MC export-int8 "$out" "$W/$tag-int8" --group 64
        out="$W/$tag-int8"
    fi
    echo "$tag: $out"
}
# v16: v15 as shipped trained on every board window of sets F, K, L, M and N (293,093 games, seeds
# 40, 80, 90, 100 and 110), lr 1e-4 with 100 warm-up steps, cosine to 0 over 3,600 steps, on the
# lent GPU machine (the model card, "v16"); v16 ships the final model, as int8 with a scale per 64
# weights. (The GPU build tokenized in its workers with v15's tokenizer, tokenizer=MODEL; the ids
# are the same as the trainer's own tokenization, which this build leaves to it.)
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ] && [ "${V16:-1}" = 1 ]; then
    history_set selfplay-110 110 57350
    FKLMN=("${FKLM[@]}" --source "$W/selfplay-110")
    anneal v16 "$W/v15-int8" 0 "${FKLMN[@]}"
fi
# v17: v16 as shipped trained on four board windows a game (sampled, seeded by the game) of sets F
# and K-P (518,905 games, seeds 40, 80, 90, 100, 110, 120 and 130; O and P new), lr 1e-4 with 100
# warm-up steps, cosine to 0 over 3,600 steps, on the lent GPU machine (the model card, "v17"); v17
# ships the final model, as int8 with a scale per 64 weights. (The GPU build read the history's
# packed copies of the sets, datasets/packed/*.mcg, which hold the same games.)
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ] &&
    [ "${V16:-1}" = 1 ] && [ "${V17:-1}" = 1 ]; then
    history_set selfplay-120 120 103758
    history_set selfplay-130 130 122271
    anneal v17 "$W/v16-int8" 4 "${FKLMN[@]}" --source "$W/selfplay-120" --source "$W/selfplay-130"
fi
# v19: v17 as shipped trained on every board window of sets E, Q, R, S and T (328,218 games, seeds
# 30, 140, 150, 160 and 180, none of them trained on by v17's line as windows), lr 1e-4 with 100
# warm-up steps, cosine to 0 over 4,800 steps (0.91 passes), on the lent GPU machine (the model
# card, "v19"); v19 ships the step-4,400 checkpoint, the lowest validation loss, as int8 with a
# scale per 64 weights. (The GPU build read the history's packed copies, datasets/packed/*.mcg,
# which hold the same games; a set played again here rather than taken from the history gets
# every index below its count, so R would come back with the 322 games its time limit cut.)
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ] &&
    [ "${V16:-1}" = 1 ] && [ "${V17:-1}" = 1 ] && [ "${V19:-1}" = 1 ]; then
    history_set selfplay-140 140 63000
    history_set selfplay-150 150 63000
    history_set selfplay-160 160 58500
    history_set selfplay-180 180 82000
    ANNEAL_STEPS=4800 ANNEAL_SHIP=4400 anneal v19 "$W/v17-int8" 0 --source "$W/selfplay-30" \
        --source "$W/selfplay-140" --source "$W/selfplay-150" --source "$W/selfplay-160" --source "$W/selfplay-180"
fi
# v21: v19 as shipped trained on every board window of sets U, Y, V, W and X (251,470 games, seeds
# 190, 220, 170, 200 and 210; Y played with a budget drawn every move), each game once
# (dedupe=true: 235,911 games), lr 1e-4 with 100 warm-up steps, cosine to 0 over 3,500 steps (0.92
# passes), on the lent GPU machine (the model card, "v21"); v21 ships the final model (also the
# lowest validation loss), as int8 with a scale per 64 weights. (The GPU build was made in two parts,
# U and Y, then V, W and X excluding them, and merged: the same data set as this one build.)
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ] &&
    [ "${V16:-1}" = 1 ] && [ "${V17:-1}" = 1 ] && [ "${V19:-1}" = 1 ] && [ "${V21:-1}" = 1 ]; then
    history_set selfplay-190 190 39026
    history_set selfplay-220 220 101459 jitter_per_move=true
    history_set selfplay-170 170 31985
    history_set selfplay-200 200 65000
    history_set selfplay-210 210 14000
    ANNEAL_STEPS=3500 ANNEAL_BUILD=dedupe=true anneal v21 "$W/v19-int8" 0 --source "$W/selfplay-190" \
        --source "$W/selfplay-220" --source "$W/selfplay-170" --source "$W/selfplay-200" --source "$W/selfplay-210"
fi
# v24: v21 as shipped grown from 20 to 30 layers (grow-model: each new layer a copy of its neighbour
# with zeroed residual outputs, so it starts out computing what v21 does; 53.2M parameters), trained
# on every board window of sets Z, AA, AB, AC and AD (211,035 games, seeds 230, 240, 250, 260 and
# 270, new to every shipped model), each game once (dedupe=true: 211,020 games), with the MLP
# projections trained through a 4-bit fake quantizer (qat.int4_modules: stored as int4 with a scale
# per 32 weights, the rest int8 per 64, 36.7 MB), lr 2e-4 with 100 warm-up steps, cosine to 0 over
# 3,400 steps (1.00 pass), on the lent GPU machine (the model card, "v24"); v24 ships the final
# model (also the lowest validation loss). A run with qat.int4_modules saves its folder quantized,
# so the run folder itself is the model. (The GPU build was made in three parts, AD, then Z, AA and
# AB, then AC, each excluding the earlier parts, and merged: the same games as this one build.)
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ] &&
    [ "${V16:-1}" = 1 ] && [ "${V17:-1}" = 1 ] && [ "${V19:-1}" = 1 ] && [ "${V21:-1}" = 1 ] && [ "${V24:-1}" = 1 ]; then
    history_set selfplay-230 230 35983 jitter_per_move=true
    history_set selfplay-240 240 27500 jitter_per_move=true
    history_set selfplay-250 250 45109 jitter_per_move=true
    history_set selfplay-260 260 27349 jitter_per_move=true
    history_set selfplay-270 270 75094 jitter_per_move=true
    [ -f "$W/grown-30/config.json" ] || $MC grow-model "$W/v21-int8" "$W/grown-30" --layers 30 --dtype bfloat16
    $MC dataset build --config configs/dataset/scratch-windows.yaml --source "$W/selfplay-270" \
        --source "$W/selfplay-230" --source "$W/selfplay-240" --source "$W/selfplay-250" --source "$W/selfplay-260" \
        --out "$W/windows-v24" examples.positions_per_game=0 dedupe=true
    $MC train --config configs/train/scratch-medium.yaml data.path="$W/windows-v24" train.output_dir="$W/run-v24" \
        model.init=pretrained model.path="$W/grown-30" model.tokenizer= train.learning_rate=2e-4 \
        train.warmup_steps=100 train.min_lr_ratio=0.0 train.max_steps=3400 train.save_steps=425 \
        eval.eval_steps=425 train.save_total_limit=0 "qat.int4_modules=[gate_proj,up_proj,down_proj]"
    echo "v24: $W/run-v24"
fi
# v25: v24 as shipped (the run folder of v24 above: it is saved in the 4-bit store) trained on every
# board window of set AE, set AG and set AF's first 22,900 games (chunks 0-228; seeds 280, 300 and
# 290, none of them trained on by a shipped model; 81,711 games kept by dedupe=true), the MLP still
# through the 4-bit fake quantizer, lr 1e-4 with 100 warm-up steps, cosine to 0 over 1,300 steps (0.98
# passes), on the lent GPU machine (the model card, "v25"); v25 ships the final model (also the
# lowest validation loss). (The GPU build was made in two parts, AG and AE, then AF excluding them,
# and merged: the same games as this one build.)
if [ "${V4:-1}" = 1 ] && [ "${V5:-1}" = 1 ] && [ "${V7:-1}" = 1 ] && [ "${V13:-1}" = 1 ] && [ "${V15:-1}" = 1 ] &&
    [ "${V16:-1}" = 1 ] && [ "${V17:-1}" = 1 ] && [ "${V19:-1}" = 1 ] && [ "${V21:-1}" = 1 ] && [ "${V24:-1}" = 1 ] &&
    [ "${V25:-1}" = 1 ]; then
    history_set selfplay-280 280 24753 jitter_per_move=true
    history_set selfplay-290 290 43600 jitter_per_move=true chunk_games=100
    history_set selfplay-300 300 34060 jitter_per_move=true
    # AF's first 229 chunks of 100 games: the games v25 trained on (the rest came after the run).
    mkdir -p "$W/selfplay-290-v25"
    find "$W/selfplay-290" -name 'games-*.parquet' | sort | head -229 | xargs -I{} ln -sf {} "$W/selfplay-290-v25/"
    ANNEAL_STEPS=1300 ANNEAL_SAVE=325 ANNEAL_BUILD=dedupe=true ANNEAL_TRAIN="qat.int4_modules=[gate_proj,up_proj,down_proj]" \
        anneal v25 "$W/run-v24" 0 --source "$W/selfplay-300" --source "$W/selfplay-280" --source "$W/selfplay-290-v25"
fi
echo "(to ship: copy config.json, engine_prompt.yaml (v13 on), generation_config.json, model.int8.safetensors and"
echo " tokenizer*.json of the int8 folder (v24, v25: of its run folder) into engine/data/bundled-model; export-int8 makes the int8 folder)"
