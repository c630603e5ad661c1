"""int8 weight storage (engine.int8store): half the size, the same model within rounding."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from engine.int8store import (
    INT8_FILE,
    dequantize_state_dict,
    export_int8,
    is_int8_folder,
    quantize_state_dict,
)


def test_rowwise_rounding_error_is_within_half_a_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.linspace(0.01, 3.0, 64)[:, None]  # rows of very different scales
    norm = torch.randn(96)
    stored = quantize_state_dict({"proj.weight": w, "norm.weight": norm})
    assert stored["proj.weight"].dtype == torch.int8
    assert stored["proj.weight" + ".int8_scale"].shape == (64,)
    assert torch.equal(stored["norm.weight"], norm), "1-D tensors are kept as they are"
    back = dequantize_state_dict(stored, torch.float32)
    assert set(back) == {"proj.weight", "norm.weight"}
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((back["proj.weight"] - w).abs() <= step / 2 + 1e-7).all()
    assert torch.equal(back["proj.weight"].abs().amax(dim=1), w.abs().amax(dim=1)), "each row's largest weight is exact"


def test_groupwise_scales_follow_each_group() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 256)
    w[:, :64] *= 100.0  # one loud group per row: row-wise scales would flatten the others
    row = dequantize_state_dict(quantize_state_dict({"w": w}), torch.float32)["w"]
    stored = quantize_state_dict({"w": w, "odd": torch.randn(4, 100)}, group=64)
    assert stored["w.int8_scale"].shape == (8, 4)
    assert stored["odd.int8_scale"].shape == (4,), "a row length the group does not divide: one scale a row"
    grp = dequantize_state_dict(stored, torch.float32)["w"]
    quiet = (slice(None), slice(64, None))
    assert (grp - w)[quiet].abs().max() < 0.05 * (row - w)[quiet].abs().max()
    step = w.view(8, 4, 64).abs().amax(dim=2, keepdim=True) / 127
    assert ((grp - w).view(8, 4, 64).abs() <= step / 2 + 1e-6).all()


def test_a_zero_row_stays_zero() -> None:
    w = torch.zeros(3, 8)
    w[1] = 1.0
    back = dequantize_state_dict(quantize_state_dict({"w": w}), torch.float32)["w"]
    assert torch.equal(back, w)


def test_missing_scale_is_a_clear_error() -> None:
    stored = quantize_state_dict({"w": torch.randn(4, 4)})
    del stored["w.int8_scale"]
    with pytest.raises(ValueError, match="w.int8_scale"):
        dequantize_state_dict(stored, torch.float32)


def test_exported_model_loads_and_scores_like_the_original(tiny_model_dir: Path, tmp_path: Path) -> None:
    from engine.config import ModelConfig
    from engine.model import load_model

    out = tmp_path / "int8"
    export_int8(tiny_model_dir, out)
    assert is_int8_folder(out) and not is_int8_folder(tiny_model_dir)
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    size8 = (out / INT8_FILE).stat().st_size
    assert size8 < 0.3 * (tiny_model_dir / "model.safetensors").stat().st_size  # float32 -> int8

    a = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    b = load_model(ModelConfig(path=str(out), device="cpu"))
    ids = torch.tensor([a.tokenizer('[Event "?"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5').input_ids])
    with torch.no_grad():
        la, lb = a.model(ids).logits, b.model(ids).logits
    assert torch.allclose(la, lb, atol=0.05 * la.abs().max().item())
    base = b.model
    if base.config.tie_word_embeddings:
        assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()


def test_int8_folder_refuses_nf4_and_plain_transformers_says_what_is_missing(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from engine.int8store import load_causal_lm

    out = tmp_path / "int8"
    export_int8(tiny_model_dir, out)
    with pytest.raises(ValueError, match="int8 weights"):
        load_causal_lm(out, quantization_config=object())
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(str(out))  # no model.safetensors: not silently random


def test_export_int8_cli_errors(tmp_path: Path, python_exe: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([python_exe, "-m", "engine.cli", "export-int8", str(empty), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no model.safetensors" in out.stderr


def test_training_starts_from_an_int8_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """model.init=pretrained on an int8 folder: the trainer's loader reads it."""
    from transformers import AutoConfig

    from training.config import load_train_config
    from training.modeling import load_base_model

    out = tmp_path / "int8"
    export_int8(tiny_model_dir, out)
    cfg = load_train_config(None, [f"model.path={out}", "model.init=pretrained", "model.dtype=float32",
                                   "quantization.load_in_4bit=false", "lora.enabled=false"])
    model = load_base_model(cfg, AutoConfig.from_pretrained(str(out)), "cpu")
    want = dequantize_state_dict(quantize_state_dict(
        {"w": _weights(tiny_model_dir)["model.layers.0.mlp.up_proj.weight"]}), torch.float32)["w"]
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight.detach(), want)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_export_int8_cli_defaults_to_a_scale_per_64_weights(tiny_model_dir: Path, tmp_path: Path,
                                                             python_exe: str) -> None:
    from safetensors.torch import load_file

    out = subprocess.run([python_exe, "-m", "engine.cli", "export-int8", str(tiny_model_dir), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stored = load_file(str(tmp_path / "x" / "model.int8.safetensors"))
    # the tiny model's down_proj rows are 128 long: two groups of 64 each
    assert stored["model.layers.0.mlp.down_proj.weight.int8_scale"].shape == (64, 2)


def test_int4_store_keeps_exactly_the_rounding_that_training_sees() -> None:
    from engine.int8store import fake_int4, int4_scale

    torch.manual_seed(2)
    w = torch.randn(6, 64) * torch.linspace(0.001, 2.0, 6)[:, None]
    w[0, :32] = 0.0  # a zero group
    attn = torch.randn(6, 64)
    state = {"model.layers.0.mlp.up_proj.weight": w, "model.layers.0.self_attn.q_proj.weight": attn,
             "model.norm.weight": torch.ones(64)}
    stored = quantize_state_dict(state, group=64, int4_modules=["up_proj"], int4_group=32)
    packed = stored["model.layers.0.mlp.up_proj.weight"]
    assert packed.dtype == torch.uint8 and packed.shape == (6, 32), "two weights a byte"
    assert stored["model.layers.0.mlp.up_proj.weight.int4_scale"].dtype == torch.float16
    assert stored["model.layers.0.self_attn.q_proj.weight"].dtype == torch.int8, "other projections stay int8"
    back = dequantize_state_dict(stored, torch.float32)
    assert torch.equal(back["model.layers.0.mlp.up_proj.weight"], fake_int4(w, 32))
    assert not back["model.layers.0.mlp.up_proj.weight"][0, :32].any(), "a zero group stays zero"
    step = int4_scale(w, 32).view(6, 2, 1)
    err = (back["model.layers.0.mlp.up_proj.weight"] - w).view(6, 2, 32).abs()
    assert (err <= step / 2 + 1e-6).all()
    assert len(torch.unique(back["model.layers.0.mlp.up_proj.weight"][3])) <= 2 * 15, "15 levels a group"
    with pytest.raises(ValueError, match="4 bits with a scale per 48"):
        quantize_state_dict({"x.up_proj.weight": torch.randn(2, 64)}, int4_modules=["up_proj"], int4_group=48)


def test_int4_export_loads_smaller_and_plays(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from engine.config import ModelConfig
    from engine.int8store import FORMAT_INT4, fake_int4
    from engine.model import load_model

    mlp = ["gate_proj", "up_proj", "down_proj"]
    out8, out4 = tmp_path / "int8", tmp_path / "int4"
    export_int8(tiny_model_dir, out8, group=32)
    export_int8(tiny_model_dir, out4, group=32, int4_modules=mlp, int4_group=32)
    assert (out4 / INT8_FILE).stat().st_size < (out8 / INT8_FILE).stat().st_size
    with safe_open(str(out4 / INT8_FILE), framework="pt") as f:
        assert (f.metadata() or {}).get("mistral_chess") == FORMAT_INT4
    b = load_model(ModelConfig(path=str(out4), device="cpu"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(dict(b.model.named_parameters())[name].detach(), fake_int4(original[name].float(), 32))
    a = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    ids = torch.tensor([a.tokenizer('[Event "?"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5').input_ids])
    with torch.no_grad():
        la, lb = a.model(ids).logits, b.model(ids).logits
    assert torch.allclose(la, lb, atol=0.25 * la.abs().max().item())  # 4-bit rounding of an untrained model
    with pytest.raises(ValueError, match="no weight of the model belongs"):
        export_int8(tiny_model_dir, tmp_path / "bad", int4_modules=["mlp_typo"])


def test_export_cli_int4_and_its_refusals(tiny_model_dir: Path, tmp_path: Path, python_exe: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python_exe, "-m", "engine.cli", "export-int8", str(tiny_model_dir), *args],
                              capture_output=True, text=True, timeout=120)

    ok = cli(str(tmp_path / "a"), "--int4", "gate_proj,up_proj", "--int4-group", "16")
    assert ok.returncode == 0, ok.stderr
    assert is_int8_folder(tmp_path / "a")
    odd = cli(str(tmp_path / "b"), "--int4", "up_proj", "--int4-group", "3")
    assert odd.returncode != 0 and "--int4-group must be an even number" in odd.stderr
    typo = cli(str(tmp_path / "c"), "--int4", "upproj")
    assert typo.returncode != 0 and "upproj" in typo.stderr and "no weight" in typo.stderr
