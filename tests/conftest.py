"""Shared fixtures: tiny random-weight Mistral models with the real Mistral tokenizer,
and Stockfish. Everything runs on the CPU."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def find_stockfish_or_none() -> str | None:
    env = os.environ.get("STOCKFISH_PATH")
    if env and Path(env).is_file():
        return env
    found = shutil.which("stockfish") or ("/usr/games/stockfish" if Path("/usr/games/stockfish").is_file() else None)
    return found


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Mistral-7B tokenizer (from mistral-common) as a Hugging Face folder.

    On machines without mistral-common (the GPU machine), MISTRAL_CHESS_TOKENIZER_DIR
    may name a folder made earlier by engine.tiny.write_mistral_tokenizer.
    """
    from engine.tiny import write_mistral_tokenizer

    ready = os.environ.get("MISTRAL_CHESS_TOKENIZER_DIR")
    if ready:
        return Path(ready)
    return write_mistral_tokenizer(tmp_path_factory.mktemp("mistral-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, mistral_tokenizer_dir: Path) -> Path:
    """A 2-layer, 64-wide random MistralForCausalLM (safetensors) with the real tokenizer."""
    from engine.tiny import make_tiny_mistral

    return make_tiny_mistral(tmp_path_factory.mktemp("tiny-mistral"), tokenizer_dir=mistral_tokenizer_dir, seed=0)


@pytest.fixture(scope="session")
def stockfish_path() -> str:
    path = find_stockfish_or_none()
    if path is None:
        pytest.fail("Stockfish not found: install Debian's 'stockfish' package or set STOCKFISH_PATH")
    return path


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
