"""Model loading on the CPU: local folders, adapters, and clear errors."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest

from engine.config import EngineConfig, ModelConfig
from engine.errors import ModelLoadError
from engine.model import load_model, resolve_paths


def test_adapter_only_folder_finds_its_base(tiny_model_dir: Path, tiny_adapter: Path) -> None:
    base, adapter = resolve_paths(ModelConfig(path=str(tiny_adapter)))
    assert base == str(tiny_model_dir) and adapter == str(tiny_adapter)


def test_base_plus_adapter_loads_and_changes_the_scores(tiny_model_dir: Path, tiny_adapter: Path) -> None:
    from engine.player import Player
    from engine.scoring import LMScorer

    plain = load_model(ModelConfig(path=str(tiny_model_dir)))
    with_adapter = load_model(ModelConfig(path=str(tiny_model_dir), adapter=str(tiny_adapter)))
    assert "adapter" in with_adapter.source and with_adapter.dtype == "float32"
    board = chess.Board()
    a = Player(EngineConfig(), LMScorer(plain.model, plain.tokenizer, "cpu"))
    b = Player(EngineConfig(), LMScorer(with_adapter.model, with_adapter.tokenizer, "cpu"))
    prompt = a.prompt_for(board)
    conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
    sa = a.scorer.score(prompt, conts).logprobs  # type: ignore[union-attr]
    sb = b.scorer.score(prompt, conts).logprobs  # type: ignore[union-attr]
    assert sa != pytest.approx(sb)  # the random LoRA weights are applied
    assert b.choose(board).move in board.legal_moves


def test_bfloat16_on_cpu(tiny_model_dir: Path) -> None:
    loaded = load_model(ModelConfig(path=str(tiny_model_dir), dtype="bfloat16"))
    assert str(next(loaded.model.parameters()).dtype) == "torch.bfloat16"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (ModelConfig(path="/no/such/model"), "model folder not found: /no/such/model"),
        (ModelConfig(path="./relative/missing"), "model folder not found"),
        (ModelConfig(path="/tmp", adapter="/no/adapter"), "adapter folder '/no/adapter' has no adapter_config.json"),
        (ModelConfig(path="/tmp", device="cpu", quantization="nf4"), "cannot read the model config"),
    ],
)
def test_bad_model_settings_are_clear_errors(cfg: ModelConfig, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(cfg)


def test_nf4_on_cpu_is_refused_clearly(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="NF4 needs a CUDA GPU"):
        load_model(ModelConfig(path=str(tiny_model_dir), device="cpu", quantization="nf4"))


def test_no_model_and_no_bundled_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.model

    monkeypatch.delenv("MISTRAL_CHESS_MODEL", raising=False)
    monkeypatch.setattr(engine.model, "bundled_model_dir", lambda: None)
    with pytest.raises(ModelLoadError, match="no model configured"):
        resolve_paths(ModelConfig())


def test_folder_without_safetensors_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    copy = tmp_path / "pt-only"
    shutil.copytree(tiny_model_dir, copy)
    from safetensors.torch import load_file

    state = load_file(str(copy / "model.safetensors"))
    (copy / "model.safetensors").unlink()
    torch.save(state, copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load_model(ModelConfig(path=str(copy)))
