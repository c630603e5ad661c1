"""combine-models: the average of fine-tunes of one parent, or the parent plus their changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.int8store import INT8_FILE, export_int8
from training.errors import TrainingError
from training.soup import combine_models, read_weights, storage_of


def _variant(src: Path, dst: Path, seed: int, scale: float = 0.02) -> Path:
    """A copy of the model in ``src`` with every float weight moved by seeded noise: a stand-in
    for a fine-tune of it."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    g = torch.Generator().manual_seed(seed)
    state = load_file(str(src / "model.safetensors"))
    moved = {k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)) if v.is_floating_point() else v
             for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in moved.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture()
def family(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A parent and two 'fine-tunes' of it, as float folders."""
    return tiny_model_dir, _variant(tiny_model_dir, tmp_path / "a", 1), _variant(tiny_model_dir, tmp_path / "b", 2)


def test_average_and_task_sum_of_float_models(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, a, b = family
    wa, wb, w0 = read_weights(a), read_weights(b), read_weights(base)
    recipe = combine_models([a, b], tmp_path / "avg")
    avg = read_weights(tmp_path / "avg")
    for k in wa:
        torch.testing.assert_close(avg[k], (wa[k] + wb[k]) / 2, rtol=0, atol=1e-6)
    assert recipe["mode"] == "average" and recipe["weights"] == [0.5, 0.5] and recipe["requantize_rms"] == 0.0
    assert json.loads((tmp_path / "avg" / "combine.json").read_text())["models"] == [str(a), str(b)]

    combine_models([a, b], tmp_path / "sum", mode="task-sum", base=base, weights=[1.0, 0.5])
    summed = read_weights(tmp_path / "sum")
    for k in wa:
        torch.testing.assert_close(summed[k], w0[k] + (wa[k] - w0[k]) + 0.5 * (wb[k] - w0[k]), rtol=0, atol=1e-5)
    # the parent's changes are what the recipe reports
    change = json.loads((tmp_path / "sum" / "combine.json").read_text())["relative_change"]
    assert set(change) == {str(a), str(b)} and all(v > 0 for v in change.values())
    # the tokenizer and the config come along: the folder loads as a model
    from engine.int8store import load_causal_lm

    model = load_causal_lm(tmp_path / "sum", dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 0

    # one model: its change from the parent scaled, here carried on past it (extrapolation)
    recipe = combine_models([a], tmp_path / "far", mode="task-sum", base=base, weights=[2.0])
    far = read_weights(tmp_path / "far")
    for k in wa:
        torch.testing.assert_close(far[k], w0[k] + 2.0 * (wa[k] - w0[k]), rtol=0, atol=1e-5)
    assert recipe["weights"] == [2.0] and recipe["models"] == [str(a)]


def test_int8_models_are_combined_and_stored_as_the_first_is(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, a, b = family
    qa = export_int8(a, tmp_path / "qa", group=32, int4_modules=("up_proj", "gate_proj")).parent
    qb = export_int8(b, tmp_path / "qb", group=32, int4_modules=("up_proj", "gate_proj")).parent
    (qa / "engine_prompt.yaml").write_text("window_plies: 16\n")
    assert storage_of(qa) == {"group": 32, "int4_modules": ["gate_proj", "up_proj"], "int4_group": 32}
    assert storage_of(a) is None
    recipe = combine_models([qa, qb], tmp_path / "avg")
    out = tmp_path / "avg"
    assert (out / INT8_FILE).is_file() and not (out / "model.safetensors").exists()
    assert storage_of(out) == storage_of(qa)
    assert (out / "engine_prompt.yaml").read_text() == "window_plies: 16\n"
    # the stored result is the float average rounded once more, and the recipe says by how much
    wa, wb, got = read_weights(qa), read_weights(qb), read_weights(out)
    num = sum(float((got[k] - (wa[k] + wb[k]) / 2).pow(2).sum()) for k in got if got[k].dim() == 2)
    den = sum(float(((wa[k] + wb[k]) / 2).pow(2).sum()) for k in got if got[k].dim() == 2)
    assert recipe["requantize_rms"] == pytest.approx((num / den) ** 0.5, rel=1e-3)
    assert 0 < recipe["requantize_rms"] < 0.2
    up = "model.layers.0.mlp.up_proj.weight"
    assert load_file(str(out / INT8_FILE))[up].dtype == torch.uint8  # still 4 bits


def test_bad_combinations_are_refused(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from engine.tiny import make_tiny_mistral

    base, a, b = family
    with pytest.raises(TrainingError, match="--mode average needs at least two models, got 1"):
        combine_models([a], tmp_path / "x")
    with pytest.raises(TrainingError, match="--mode task-sum needs at least one model, got 0"):
        combine_models([], tmp_path / "x", mode="task-sum", base=base)
    with pytest.raises(TrainingError, match="give the parent with --base"):
        combine_models([a, b], tmp_path / "x", mode="task-sum")
    with pytest.raises(TrainingError, match="--base is for --mode task-sum"):
        combine_models([a, b], tmp_path / "x", base=base)
    with pytest.raises(TrainingError, match="must sum to 1, not 1.5"):
        combine_models([a, b], tmp_path / "x", weights=[1.0, 0.5])
    with pytest.raises(TrainingError, match="1 weights for 2 models"):
        combine_models([a, b], tmp_path / "x", weights=[1.0])
    with pytest.raises(TrainingError, match="mode must be one of"):
        combine_models([a, b], tmp_path / "x", mode="median")
    with pytest.raises(TrainingError, match="writes a new folder"):
        combine_models([a, b], a)
    wide = make_tiny_mistral(tmp_path / "wide", hidden_size=64, intermediate_size=256, seed=3,
                             tokenizer_dir=a)
    with pytest.raises(TrainingError, match="another architecture.*intermediate_size"):
        combine_models([a, wide], tmp_path / "x")
    with pytest.raises(TrainingError, match="no config.json"):
        combine_models([a, tmp_path], tmp_path / "x")
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((a / "config.json").read_text())
    with pytest.raises(TrainingError, match="no model.safetensors or model.int8.safetensors"):
        combine_models([a, empty], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_combine_models_command(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, a, b = family
    out = tmp_path / "cmd"
    run = subprocess.run([sys.executable, "-m", "training", "combine-models", str(out), str(a), str(b),
                          "--mode", "task-sum", "--base", str(base), "--weights", "0.5,0.5"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["weights"] == [0.5, 0.5]
    assert (out / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "training", "combine-models", str(out / "y"), str(a), str(b),
                          "--weights", "half,half"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "--weights 'half,half': give numbers separated by commas" in bad.stderr
