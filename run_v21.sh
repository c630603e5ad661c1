#!/bin/bash
# untracked: session 22 GPU call (v21)
export PYTHONPATH=$PWD/.gpu2/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt 2>&1
FINAL_PICK=eval_loss MODEL_TAG=${TAG:-v21} FINAL_INT8_GROUP=64 GAMES='.gpu*/datasets/*' EVAL_OPPONENTS=none \
TRAIN_STEPS=${STEPS:-2000} SAVE_STEPS=400 BUDGET_S=$((575-SECONDS)) \
BUILD_OVERRIDES="examples.window_plies=16 examples.positions_per_game=0 examples.max_ply=0 tokenizer=engine/data/bundled-model ${EXTRA_BUILD}" \
TRAIN_OVERRIDES="model.init=pretrained model.path=engine/data/bundled-model model.tokenizer= train.learning_rate=1e-4 train.warmup_steps=100 train.min_lr_ratio=0.0 ${EXTRA_TRAIN}" \
python3 scripts/bundled_gpu.py train > $OUT/call-${TAG:-v21}.log 2>&1
echo rc=$?; tail -40 $OUT/call-${TAG:-v21}.log; ls -la $OUT
