#!/usr/bin/env bash
# Stand another model folder in for engine/data/bundled-model in the working tree, for GPU
# calls that start from it (TRAIN_OVERRIDES="model.init=pretrained model.path=engine/data/bundled-model")
# or play it (EVAL_OPPONENTS=bundled). A call carries the working tree, 64 MiB at most; the
# tracked tree holds the bundled model (37 MB) and cannot carry a second one beside it with
# games, so the arm takes the bundled model's place for the call. Then put the tree back.
#
#   bash scripts/gpu_stand_in.sh SRC [--drop-results]
#       SRC: a model folder, or COMMIT:PATH of one kept in the history
#       (e.g. abe57c5:engine/data/arms/v26). Its files replace the bundled model's files of the
#       same names (config, tokenizer, weights, engine_prompt.yaml, ...).
#       --drop-results: also take the tracked PGN and PNG files of benchmarks/results/ (about
#       19 MB) out of the working tree, for calls that carry more games or Stockfish.
#   bash scripts/gpu_stand_in.sh --restore
#       put the tracked files back (git checkout) and check that the bundled model is the
#       committed one again.
#
# While a stand-in is in place, .gpu2/STAND_IN names it and a pre-commit hook in this clone
# refuses every commit, so the arm never lands in the bundled model's place by mistake;
# --restore removes both.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=engine/data/bundled-model
MARK=.gpu2/STAND_IN
HOOK=$(git rev-parse --git-path hooks)/pre-commit

restore() {
    git checkout -- "$MODEL" benchmarks/results
    git clean -fdq -- "$MODEL"  # files of the stand-in that the bundled model does not have
    git diff --quiet -- "$MODEL" benchmarks/results || { echo "$MODEL or benchmarks/results still differ from HEAD" >&2; exit 1; }
    rm -f "$MARK"
    if [ -f "$HOOK" ] && grep -q "gpu_stand_in.sh" "$HOOK"; then rm -f "$HOOK"; fi
    echo "restored: $MODEL is HEAD's again"
}

if [ "${1:-}" = "--restore" ]; then
    [ $# -eq 1 ] || { echo "--restore takes nothing else" >&2; exit 2; }
    restore
    exit 0
fi
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: bash scripts/gpu_stand_in.sh SRC [--drop-results] | --restore" >&2; exit 2; }
src=$1 drop=0
if [ $# -eq 2 ]; then
    [ "$2" = "--drop-results" ] || { echo "unknown option $2 (use --drop-results)" >&2; exit 2; }
    drop=1
fi
if [ -e "$MARK" ]; then
    echo "a stand-in is already in place ($(cat "$MARK")): run --restore first" >&2; exit 1
fi
if [ -f "$HOOK" ] && ! grep -q "gpu_stand_in.sh" "$HOOK"; then
    echo "$HOOK is a pre-commit hook of yours: this script would replace it; move it aside first" >&2; exit 1
fi
if [ -n "$(git status --porcelain -- "$MODEL")" ]; then
    echo "$MODEL has uncommitted changes or untracked files: commit or remove them first" >&2; exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "$src" in
    *:*)
        commit=${src%%:*} path=${src#*:}
        git rev-parse --verify -q "$commit^{commit}" >/dev/null || { echo "$commit: not a commit of this repository" >&2; exit 1; }
        git archive "$commit" "$path" 2>/dev/null | tar -x -C "$tmp" || { echo "$src: no such folder in that commit" >&2; exit 1; }
        folder=$tmp/$path ;;
    *)
        folder=$src ;;
esac
[ -d "$folder" ] || { echo "$src: not a folder" >&2; exit 1; }
[ -f "$folder/config.json" ] || { echo "$src: no config.json, not a model folder" >&2; exit 1; }
ls "$folder"/model*.safetensors >/dev/null 2>&1 || { echo "$src: no model*.safetensors weights" >&2; exit 1; }

mkdir -p .gpu2 "$(dirname "$HOOK")"
echo "$src" > "$MARK"
cat > "$HOOK" <<'EOF'
#!/bin/sh
# written by scripts/gpu_stand_in.sh: a model stands in for the bundled one in the working tree
echo "refused: $(cat .gpu2/STAND_IN) stands in for engine/data/bundled-model; run bash scripts/gpu_stand_in.sh --restore first" >&2
exit 1
EOF
chmod +x "$HOOK"
# the bundled model's weights file of the other storage would shadow the stand-in's: drop both first
rm -f "$MODEL"/model.safetensors "$MODEL"/model.int8.safetensors
cp "$folder"/* "$MODEL"/
if [ "$drop" = 1 ]; then
    git ls-files -z 'benchmarks/results/*.pgn' 'benchmarks/results/*.pgn.gz' 'benchmarks/results/*.png' | xargs -0 rm -f
fi
source scripts/tree_size.sh
tree=$(travelling_tree_bytes)
echo "$src stands in for $MODEL; the working tree that travels now takes $tree bytes (a call carries 67108864 with its carried folders)"
echo "after the call: bash scripts/gpu_stand_in.sh --restore"
