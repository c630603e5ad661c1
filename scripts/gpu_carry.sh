#!/usr/bin/env bash
# Make .gpu2/ (git-ignored): what scripts/bundled_gpu.py needs on the lent GPU machine
# beyond that machine's image, for the device tool's `carry: [".gpu2"]`:
#   .gpu2/stockfish.xz   this machine's Stockfish (Debian's x86-64 build), xz-compressed
#   .gpu2/site/          python-chess and loguru (pure Python; PYTHONPATH=$PWD/.gpu2/site)
# Self-play sets returned by the selfplay phase (selfplay-SEED.tgz) go into .gpu2/ too.
# A new session's checkout starts without .gpu2: run this first (about 30 s).
#   bash scripts/gpu_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu2
sf=${STOCKFISH_PATH:-$(command -v stockfish || echo /usr/games/stockfish)}
[ -x "$sf" ] || { echo "no Stockfish at $sf (apt-get install stockfish, or set STOCKFISH_PATH)" >&2; exit 1; }
if [ ! -s .gpu2/stockfish.xz ]; then
    xz -6 -T0 -c "$sf" > .gpu2/stockfish.xz.tmp && mv .gpu2/stockfish.xz.tmp .gpu2/stockfish.xz
fi
# The versions pyproject.toml asks for; both are pure Python, so a wheel built here runs on
# the GPU image's Python 3.12.
rm -rf .gpu2/site
python3 -m pip install -q --no-deps --no-compile --target .gpu2/site "chess>=1.11" "loguru>=0.7"
du -sh .gpu2/stockfish.xz .gpu2/site
echo "carry .gpu2 with the device tool; the calls are listed in scripts/bundled_gpu.py"
