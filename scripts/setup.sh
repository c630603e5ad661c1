#!/usr/bin/env bash
# Set up mistral-chess in ./.venv on a fresh machine.
#   bash scripts/setup.sh          # engine, training, arena, bot (CPU build of torch)
#   bash scripts/setup.sh --test   # ... plus test tools (pytest, ruff, mypy, mistral-common)
#   bash scripts/setup.sh --gpu    # keep/install a CUDA torch and add bitsandbytes (NF4, QLoRA) and liger-kernel
# Stockfish comes from the Debian/Ubuntu package `stockfish` (/usr/games/stockfish).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="mistral-tokenizer"
gpu=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="$extras,test" ;;
    --gpu) gpu=1; extras="$extras,gpu" ;;
    *) echo "setup.sh: unknown argument $arg (use --test, --gpu)" >&2; exit 2 ;;
  esac
done

if ! command -v stockfish >/dev/null 2>&1 && [ ! -x /usr/games/stockfish ]; then
  echo "setup.sh: installing Stockfish (Debian package 'stockfish')"
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q stockfish
fi

# The tests compile a training forward with torch.compile, whose CPU backend builds C++
# (g++ and the Python headers).
if [[ ",$extras," == *",test,"* ]] && ! command -v g++ >/dev/null 2>&1; then
  echo "setup.sh: installing a C++ compiler for torch.compile's CPU backend (Debian packages 'g++', 'python3-dev')"
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q g++ python3-dev
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

if ! python -c "import torch" >/dev/null 2>&1; then
  if [ "$gpu" = 1 ]; then
    python -m pip install -q torch
  else
    # The CPU build: a local wheel on pip's find-links path if there is one, else
    # PyTorch's CPU index.
    python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[$extras]"
python -c "import torch, transformers, chess; print('mistral-chess ready: torch', torch.__version__, '| transformers', transformers.__version__)"
