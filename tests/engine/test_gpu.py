"""GPU paths (run on the GPU machine: pytest -m gpu): NF4 loading with a LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest

from engine.config import EngineConfig, ModelConfig

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", ["constrained", "generate"])
def test_nf4_with_adapter_plays_legal_moves_on_cuda(tiny_model_dir: Path, tiny_adapter: Path, mode: str) -> None:
    from engine.model import load_model
    from engine.player import Player
    from engine.scoring import LMScorer

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), adapter=str(tiny_adapter), device="cuda", quantization="nf4"))
    assert loaded.quantization == "nf4" and loaded.device == "cuda"
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
    cfg = EngineConfig()
    cfg.search.mode = mode  # type: ignore[assignment]
    player = Player(cfg, LMScorer(loaded.model, loaded.tokenizer, loaded.device))
    board = chess.Board()
    for _ in range(12):
        d = player.choose(board)
        assert d.move is not None and d.move in board.legal_moves
        board.push(d.move)

