"""grow-model: a deeper copy of a trained model that computes the same logits, and trains."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from engine.int8store import export_int8
from training.errors import TrainingError
from training.grow import grow_depth, layer_map, parameter_count

TEXT = '[White "a"]\n[Black "b"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4.'


def _logits(folder: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    from engine.int8store import load_causal_lm

    model = load_causal_lm(folder, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(str(folder))(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_layer_map_interleaves_and_refuses_shrinking() -> None:
    assert layer_map(10, 20) == [i // 2 for i in range(20)]
    assert layer_map(2, 5) == [0, 0, 0, 1, 1]
    assert layer_map(3, 3) == [0, 1, 2]
    with pytest.raises(TrainingError, match="fewer than the source model's 10"):
        layer_map(10, 8)


def test_grown_model_computes_the_same_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = grow_depth(tiny_model_dir, tmp_path / "grown", 5)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer.model").is_file()
    # The function is kept exactly (float32 through and through; the zeroed residual
    # outputs add exact zeros).
    torch.testing.assert_close(_logits(out), _logits(tiny_model_dir), rtol=0, atol=1e-5)

    old, new = _weights(tiny_model_dir), _weights(out)
    # first copies are the old layers; repeats have zero residual outputs and the old inputs
    for j, i in enumerate([0, 0, 0, 1, 1]):
        first = j in (0, 3)
        for name in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
            assert torch.equal(new[f"model.layers.{j}.{name}"], old[f"model.layers.{i}.{name}"])
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            grown = new[f"model.layers.{j}.{name}"]
            if first:
                assert torch.equal(grown, old[f"model.layers.{i}.{name}"])
            else:
                assert not grown.any()
    assert parameter_count(out) > parameter_count(tiny_model_dir)


def test_grown_model_trains_its_new_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The zeroed projections get gradients at once, so the copies do not stay identities."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = grow_depth(tiny_model_dir, tmp_path / "grown", 4)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(str(out))(TEXT, return_tensors="pt").input_ids
    model(ids, labels=ids).loss.backward()
    for j in (1, 3):  # the repeats
        layer = model.model.layers[j]
        assert layer.self_attn.o_proj.weight.grad.abs().sum() > 0
        assert layer.mlp.down_proj.weight.grad.abs().sum() > 0


def test_grow_from_int8_folder_and_into_the_trainer(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from training.config import load_train_config
    from training.modeling import load_base_model

    int8 = tmp_path / "int8"
    export_int8(tiny_model_dir, int8, group=16)
    out = grow_depth(int8, tmp_path / "grown", 4, dtype="bfloat16")
    assert _weights(out)["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    cfg = load_train_config(None, [f"model.path={out}", "model.init=pretrained", "model.dtype=float32",
                                   "quantization.load_in_4bit=false", "lora.enabled=false"])
    model = load_base_model(cfg, AutoConfig.from_pretrained(str(out)), "cpu")
    assert len(model.model.layers) == 4
    # the grown bf16 copy of the int8 model predicts as the int8 model does (bf16 rounding only)
    assert torch.equal(_logits(out)[0, -1].argmax(), _logits(int8)[0, -1].argmax())


def test_grow_refusals(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no config.json"):
        grow_depth(tmp_path, tmp_path / "x", 4)
    with pytest.raises(TrainingError, match="fewer than"):
        grow_depth(tiny_model_dir, tmp_path / "x", 1)
    with pytest.raises(TrainingError, match="another destination"):
        grow_depth(tiny_model_dir, tiny_model_dir, 4)
    assert not (tmp_path / "x").exists()


def test_grow_model_cli(tiny_model_dir: Path, tmp_path: Path, python_exe: str) -> None:
    out = subprocess.run([python_exe, "-m", "engine.cli", "grow-model", str(tiny_model_dir), str(tmp_path / "g"),
                          "--layers", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "3 layers" in out.stdout and "computes what" in out.stdout
    bad = subprocess.run([python_exe, "-m", "engine.cli", "grow-model", str(tiny_model_dir), str(tmp_path / "h"),
                          "--layers", "1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "fewer than the source model's 2" in bad.stderr
