"""Combine fine-tunes of one parent into one model (``mistral-chess combine-models``).

Two arms trained from the same model on different games (the bundled model's v26 and v28,
each one annealed pass from v25) have each moved the parent a little, in directions that
need not conflict. Two ways to put them together without another training run:

- ``average`` (a "model soup", Wortsman et al. 2022): the weighted mean of the models,
  weights summing to 1 (equal by default). It stays between the arms.
- ``task-sum`` (task arithmetic, Ilharco et al. 2023): the parent plus the sum of each
  arm's change from it, ``base + sum_i w_i (model_i - base)`` (weights 1 by default): both
  updates at once, as if the arms had been trained one after the other. With one model it
  scales that model's change: ``--weights 2`` goes on past it along the same line
  (extrapolation), ``0.5`` stops halfway.

The models must share the architecture (``config.json``, tensor names and shapes). Weights
stored as int8/int4 (:mod:`engine.int8store`) are read dequantized, combined in float32 and
written in the first model's storage: the same int8 groups and the same int4 modules and
groups, so the result fits the same bytes. The combined weights lie between the int4 grid's
levels and are rounded again; ``combine_models`` reports how far that rounding moved them
(``requantize_rms``, relative to the weights' own RMS). The folder gets the first model's
config, tokenizer, generation settings and ``engine_prompt.yaml`` (the engine's prompt
format), and ``combine.json``, the recipe.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.errors import TrainingError
from training.grow import KEPT_FILES as GROW_KEPT_FILES

MODES = ("average", "task-sum")
# What the combined folder takes from the first model besides its weights and tokenizer files (not
# its card or logs): what grow-model keeps, with the config (the architecture is the same) and the
# engine's prompt format.
KEPT_FILES = ("config.json", "engine_prompt.yaml", *GROW_KEPT_FILES)
RECIPE_FILE = "combine.json"


def read_weights(folder: str | Path) -> dict[str, Any]:
    """The float32 weights of a model folder (``model.safetensors`` or ``model.int8.safetensors``)."""
    import torch
    from safetensors.torch import load_file

    from engine.int8store import INT8_FILE, dequantize_state_dict

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / "model.safetensors")).items()}
    if (folder / INT8_FILE).is_file():
        return dequantize_state_dict(load_file(str(folder / INT8_FILE)), torch.float32)
    raise TrainingError(f"{folder}: no model.safetensors or {INT8_FILE} (give a model folder; sharded folders are not supported)")


def storage_of(folder: str | Path) -> dict[str, Any] | None:
    """How an int8 folder stores its weights, for writing the combination the same way:
    ``{"group": int8 group (0 = a scale per row), "int4_modules": [...], "int4_group": n}``;
    None for a float ``model.safetensors`` folder."""
    import torch
    from safetensors.torch import load_file

    from engine.int8store import INT4_SCALE_SUFFIX, INT8_FILE, SCALE_SUFFIX

    folder = Path(folder)
    if (folder / "model.safetensors").is_file() or not (folder / INT8_FILE).is_file():
        return None
    stored = load_file(str(folder / INT8_FILE))
    groups: set[int] = set()
    int4_modules: set[str] = set()
    int4_groups: set[int] = set()
    for name, t in stored.items():
        if name.endswith((SCALE_SUFFIX, INT4_SCALE_SUFFIX)):
            continue
        if t.dtype == torch.uint8:
            int4_modules.add(name.split(".")[-2])
            scale = stored[name + INT4_SCALE_SUFFIX]
            int4_groups.add(2 * t.shape[1] // scale.reshape(t.shape[0], -1).shape[1])
        elif t.dtype == torch.int8:
            scale = stored[name + SCALE_SUFFIX]
            per_row = scale.reshape(t.shape[0], -1).shape[1]
            groups.add(0 if per_row == 1 else t.shape[1] // per_row)
    if len(groups) > 1 or len(int4_groups) > 1:
        raise TrainingError(f"{folder}: mixed int8 groups {sorted(groups)} or int4 groups {sorted(int4_groups)}; "
                            "combine-models writes one storage")
    return {"group": groups.pop() if groups else 0, "int4_modules": sorted(int4_modules),
            "int4_group": int4_groups.pop() if int4_groups else 32}


def _architecture(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.is_file():
        raise TrainingError(f"{folder}: no config.json (give a model folder)")
    config = json.loads(file.read_text())
    # Settings that say how the weights were saved, not what the network is.
    for key in ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "use_cache"):
        config.pop(key, None)
    return config


def combine_state(states: Sequence[dict[str, Any]], weights: Sequence[float], *, mode: str,
                  base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The combined weights (float32); ``states`` share names and shapes (checked by the caller)."""
    if mode not in MODES:
        raise TrainingError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    out: dict[str, Any] = {}
    for name in states[0]:
        tensors = [s[name] for s in states]
        if not tensors[0].is_floating_point():
            out[name] = tensors[0].clone()
            continue
        if mode == "average":
            acc = sum(w * t.float() for w, t in zip(weights, tensors, strict=True))
        else:
            assert base is not None
            start = base[name].float()
            acc = start + sum(w * (t.float() - start) for w, t in zip(weights, tensors, strict=True))
        out[name] = acc
    return out


def combine_models(models: Sequence[str | Path], out: str | Path, *, mode: str = "average",
                   base: str | Path | None = None, weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Write the combination of ``models`` to the new folder ``out``; returns the recipe
    (also written as ``combine.json``) with how far the storage's rounding moved the weights."""
    import torch

    from engine.int8store import INT8_FILE, dequantize_state_dict, quantize_state_dict, write_quantized

    folders = [Path(m) for m in models]
    if mode not in MODES:
        raise TrainingError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not folders or (mode == "average" and len(folders) < 2):
        need = "at least two models" if mode == "average" else "at least one model"
        raise TrainingError(f"--mode {mode} needs {need}, got {len(folders)}")
    if mode == "task-sum" and base is None:
        raise TrainingError("--mode task-sum adds each model's change from their parent: give the parent with --base")
    if mode == "average" and base is not None:
        raise TrainingError("--base is for --mode task-sum; an average needs no parent")
    if weights is None:
        weights = [1.0 / len(folders)] * len(folders) if mode == "average" else [1.0] * len(folders)
    weights = [float(w) for w in weights]
    if len(weights) != len(folders):
        raise TrainingError(f"{len(weights)} weights for {len(folders)} models: give one weight a model")
    if mode == "average" and abs(sum(weights) - 1.0) > 1e-6:
        raise TrainingError(f"the weights of an average must sum to 1, not {sum(weights):g} ({', '.join(map(str, weights))})")
    out = Path(out)
    everything = [*folders, *([Path(base)] if base is not None else [])]
    if any(out.resolve() == f.resolve() for f in everything):
        raise TrainingError("combine-models writes a new folder: give another destination")

    arch = _architecture(folders[0])
    for f in everything[1:]:
        other = _architecture(f)
        if other != arch:
            diff = sorted(k for k in set(arch) | set(other) if arch.get(k) != other.get(k))
            raise TrainingError(f"{f}: another architecture than {folders[0]} (config.json differs in {', '.join(diff[:6])})")
    states = [read_weights(f) for f in folders]
    base_state = read_weights(base) if base is not None else None
    names = set(states[0])
    for f, s in zip(everything, [*states, *([base_state] if base_state is not None else [])], strict=True):
        if set(s) != names:
            extra, missing = sorted(set(s) - names), sorted(names - set(s))
            raise TrainingError(f"{f}: other tensors than {folders[0]} (extra {extra[:3]}, missing {missing[:3]})")
        for name in names:
            if s[name].shape != states[0][name].shape:
                raise TrainingError(f"{f}: {name} is {tuple(s[name].shape)}, {tuple(states[0][name].shape)} in {folders[0]}")

    combined = combine_state(states, weights, mode=mode, base=base_state)
    storage = storage_of(folders[0])
    out.mkdir(parents=True, exist_ok=True)
    for f in folders[0].iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in KEPT_FILES):
            shutil.copy2(f, out / f.name)
    for stale in ("model.safetensors", INT8_FILE):
        (out / stale).unlink(missing_ok=True)

    recipe: dict[str, Any] = {
        "what": "mistral-chess combine-models: fine-tunes of one parent combined without training",
        "mode": mode,
        "models": [str(f) for f in folders],
        "weights": weights,
        "base": str(base) if base is not None else None,
        "storage": storage or "float32 model.safetensors",
    }
    if storage is None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in combined.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
        recipe["requantize_rms"] = 0.0
    else:
        stored = quantize_state_dict(combined, **storage)
        write_quantized(stored, out / INT8_FILE)
        # How far the storage's rounding moved the combined weights, over all 2-D weights.
        rounded = dequantize_state_dict(stored, torch.float32)
        err = sum(float((rounded[k] - v).pow(2).sum()) for k, v in combined.items() if v.dim() == 2)
        norm = sum(float(v.pow(2).sum()) for v in combined.values() if v.dim() == 2)
        recipe["requantize_rms"] = (err / norm) ** 0.5 if norm else 0.0
    # How far apart the inputs are: each model's change from the first (or from the parent).
    ref = base_state if base_state is not None else states[0]
    recipe["relative_change"] = {
        str(f): (sum(float((s[k] - ref[k]).pow(2).sum()) for k in names if s[k].dim() == 2)
                 / max(sum(float(ref[k].pow(2).sum()) for k in names if ref[k].dim() == 2), 1e-30)) ** 0.5
        for f, s in zip(folders, states, strict=True)
    }
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe
