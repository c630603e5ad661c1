"""Quantization-aware training (training/qat.py): the forward sees the 4-bit weights, the
gradient passes straight through, and the saved model holds exactly those weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import ConfigError
from engine.int8store import INT8_FILE, fake_int4, is_int8_folder
from training.config import load_train_config
from training.qat import FakeInt4Linear, apply_fake_int4
from training.trainer import train


def test_forward_uses_rounded_weights_and_gradient_passes_straight_through() -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 8)
    model = torch.nn.Sequential()
    model.add_module("up_proj", torch.nn.Linear(64, 8))
    model.up_proj.load_state_dict(plain.state_dict())
    assert apply_fake_int4(model, ["up_proj"], 32) == ["up_proj"]
    assert isinstance(model.up_proj, FakeInt4Linear)
    assert set(model.state_dict()) == {"up_proj.weight", "up_proj.bias"}, "names and state dict unchanged"
    x = torch.randn(5, 64)
    y = model(x)
    want = torch.nn.functional.linear(x, fake_int4(plain.weight.detach(), 32), plain.bias)
    assert torch.allclose(y, want, atol=1e-6)
    assert not torch.allclose(y, plain(x), atol=1e-4), "the rounding changes the output"
    y.sum().backward()
    plain(x).sum().backward()
    assert torch.allclose(model.up_proj.weight.grad, plain.weight.grad), (
        "straight-through: the plain gradient"
    )


def test_apply_refuses_what_it_cannot_round() -> None:
    model = torch.nn.Sequential()
    model.add_module("up_proj", torch.nn.Linear(48, 8))
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_fake_int4(model, ["gate_proj"], 16)
    with pytest.raises(ValueError, match="48 inputs.*32"):
        apply_fake_int4(model, ["up_proj"], 32)


def test_config_refusals() -> None:
    with pytest.raises(ConfigError, match="lora.enabled=false"):
        load_train_config(None, ["model.path=x", "qat.int4_modules=[up_proj]"])
    with pytest.raises(ConfigError, match="even number"):
        load_train_config(
            None, ["model.path=x", "lora.enabled=false", "qat.int4_modules=[up_proj]", "qat.int4_group=7"]
        )
    with pytest.raises(ConfigError, match="twice"):
        load_train_config(None, ["model.path=x", "lora.enabled=false", "qat.int4_modules=[up_proj,up_proj]"])


def test_qat_run_saves_the_weights_it_trained_with(
    tmp_path: Path, tiny_model_dir: Path, train_dataset: Path
) -> None:
    out = tmp_path / "qat"
    overrides = [
        f"model.path={tiny_model_dir}",
        "model.init=pretrained",
        "lora.enabled=false",
        "qat.int4_modules=[gate_proj,up_proj,down_proj]",
        "qat.int4_group=32",
        "qat.int8_group=32",
        f"data.path={train_dataset}",
        "data.max_length=128",
        f"train.output_dir={out}",
        "train.max_steps=8",
        "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.learning_rate=0.003",
        "train.save_steps=8",
        "train.save_dtype=bfloat16",
        "train.logging_steps=2",
        "train.gradient_checkpointing=false",
        "train.threads=1",
        "eval.eval_steps=0",
        "eval.generation_positions=2",
        "eval.max_new_tokens=3",
    ]
    train(load_train_config(None, overrides))
    assert is_int8_folder(out) and not (out / "model.safetensors").exists(), "saved in the 4-bit store"
    ckpt = load_file(str(out / "checkpoints" / "step-0000008" / "trainable.safetensors"))
    from engine.int8store import load_causal_lm

    shipped = dict(load_causal_lm(out).named_parameters())
    name = "model.layers.0.mlp.gate_proj.weight"
    trained = ckpt[name].to(torch.bfloat16).float()  # the run saves bfloat16
    assert torch.equal(shipped[name].detach(), fake_int4(trained, 32)), "the 4-bit weights the forward used"
    assert not torch.equal(trained, fake_int4(trained, 32))
    # the exported checkpoint is the same stored model
    from training.modeling import export_checkpoint

    exported = tmp_path / "exported"
    export_checkpoint(out, out / "checkpoints" / "step-0000008", exported)
    assert load_file(str(exported / INT8_FILE)).keys() == load_file(str(out / INT8_FILE)).keys()
    assert torch.equal(load_file(str(exported / INT8_FILE))[name], load_file(str(out / INT8_FILE))[name])


def test_checkpoint_of_a_run_from_an_int8_base_exports_every_weight(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A run that goes on from a shipped folder (int8 store, built from its config) and saves
    through save_for_engine: transformers 5.25 empties the state dict it is handed while
    writing, which once left the 4-bit store of such an export with no tensor at all."""
    from transformers import AutoTokenizer

    from engine.int8store import export_int8, load_causal_lm
    from training.modeling import save_for_engine

    base = tmp_path / "base-int8"
    export_int8(tiny_model_dir, base, group=32)
    cfg = load_train_config(None, [
        f"model.path={base}", "model.init=pretrained", "lora.enabled=false",
        "qat.int4_modules=[gate_proj,up_proj,down_proj]", "qat.int4_group=32", "qat.int8_group=32",
    ])  # fmt: skip
    model = load_causal_lm(base)
    out = tmp_path / "exported"
    save_for_engine(model, AutoTokenizer.from_pretrained(str(tiny_model_dir)), cfg, out)
    stored = load_file(str(out / INT8_FILE))
    assert any(k.endswith("mlp.up_proj.weight") for k in stored), sorted(stored)[:5]
    reloaded = load_causal_lm(out)  # raises when a weight is missing
    name = "model.layers.0.mlp.up_proj.weight"
    want = fake_int4(dict(model.named_parameters())[name].detach(), 32)
    assert torch.equal(dict(reloaded.named_parameters())[name].detach(), want)
