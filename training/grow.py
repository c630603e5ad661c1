"""Grow a trained model deeper, keeping what it computes (depth up-scaling).

A small model that has stopped learning from more data of its kind (the bundled model
after v5: ``engine/data/bundled-model/README.md``) needs more parameters, and training a
larger one from scratch throws the smaller one's training away. :func:`grow_depth`
builds a model with more decoder layers from a trained one instead: new layer ``j`` of
``N`` is a copy of old layer ``j * L // N`` of ``L``, so each old layer appears
``N / L`` times in a row (interleaved, in the old order). Every copy after the first
has its two residual outputs (``self_attn.o_proj`` and ``mlp.down_proj``) set to zero,
so it adds nothing to the residual stream: **the grown model computes exactly what the
old one did** (the tests check the logits), and training starts from the old model's
strength, not below it. The zeroed projections get gradients at once (their inputs are
the copied layer's activations), and the rest of the copy follows after the first step.

Everything but the layer count is kept: width, heads, vocabulary, embeddings, the final
norm, the tokenizer files and the generation config (not the old model's card or logs). The result is an ordinary ``model.safetensors`` folder in
float32 (or ``dtype``), loadable by ``transformers`` and by the trainer's
``model.init=pretrained model.path=DST``. The source may hold int8 weights
(:mod:`engine.int8store`).

``mistral-chess grow-model SRC DST --layers N``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from training.errors import TrainingError

# The residual-stream outputs of a Mistral decoder layer: zero them and the layer is the identity.
RESIDUAL_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
WEIGHT_FILES = ("model.safetensors", "model.int8.safetensors", "model.safetensors.index.json")
KEPT_FILES = ("generation_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
              "merges.txt", "chat_template.jinja")


def layer_map(old_layers: int, new_layers: int) -> list[int]:
    """For each new layer, the old layer it copies (interleaved: 0,0,1,1,... for 2x)."""
    if old_layers < 1:
        raise TrainingError(f"the source model has {old_layers} layers")
    if new_layers < old_layers:
        raise TrainingError(f"--layers {new_layers} is fewer than the source model's {old_layers}: growing only adds layers")
    return [j * old_layers // new_layers for j in range(new_layers)]


def grow_state_dict(state: dict[str, Any], old_layers: int, new_layers: int) -> dict[str, Any]:
    """The state dict of the grown model (copies share no storage with ``state``)."""
    import torch

    mapping = layer_map(old_layers, new_layers)
    prefix = "model.layers."
    out: dict[str, Any] = {}
    per_layer: dict[int, dict[str, Any]] = {}
    for name, t in state.items():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            per_layer.setdefault(int(index), {})[rest] = t
        else:
            out[name] = t.clone()
    if sorted(per_layer) != list(range(old_layers)):
        raise TrainingError(f"the weights hold layers {sorted(per_layer)[:12]}, the config says {old_layers}")
    seen: set[int] = set()
    for j, i in enumerate(mapping):
        repeat = i in seen
        seen.add(i)
        for rest, t in per_layer[i].items():
            copy = t.clone()
            if repeat and rest in RESIDUAL_OUTPUTS:
                copy = torch.zeros_like(copy)
            out[f"{prefix}{j}.{rest}"] = copy
    return out


def grow_depth(src: str | Path, dst: str | Path, layers: int, *, dtype: str = "float32") -> Path:
    """Write to ``dst`` the model of ``src`` grown to ``layers`` decoder layers; returns ``dst``."""
    import torch
    from transformers import AutoConfig

    from engine.int8store import load_causal_lm

    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise TrainingError(f"{src}: no config.json (give a model folder)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise TrainingError("grow-model writes a new folder: give another destination")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise TrainingError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    config = AutoConfig.from_pretrained(str(src))
    if getattr(config, "model_type", None) != "mistral":
        raise TrainingError(f"{src}: model_type {getattr(config, 'model_type', None)!r}; grow-model handles Mistral models")
    old = int(config.num_hidden_layers)
    layer_map(old, layers)  # checks the sizes before the weights are read
    try:
        model = load_causal_lm(src, config=config, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{src}: cannot load the model: {exc}") from None
    state = {k: v for k, v in model.state_dict().items()
             if not (getattr(config, "tie_word_embeddings", False) and k == "lm_head.weight")}
    grown = grow_state_dict(state, old, layers)
    del model, state

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config.num_hidden_layers = layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types:  # one entry per layer in recent transformers
        config.layer_types = [layer_types[i] for i in layer_map(old, layers)]
    config.dtype = dtype
    # Build the grown model once, so that a mismatch shows here and not at training time.
    target = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = target.load_state_dict(grown, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise TrainingError(f"grown weights do not fit the grown config (missing {sorted(set(missing) - tied)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]})")
    del target
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # the tokenizer and generation settings; not the old model's card or logs
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in KEPT_FILES):
            shutil.copy2(f, dst / f.name)
    for name in WEIGHT_FILES:
        (dst / name).unlink(missing_ok=True)
    config.save_pretrained(str(dst))
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in grown.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


def parameter_count(folder: str | Path) -> int:
    """Parameters of the model in ``folder`` (tied embeddings counted once), from its weights file."""
    from safetensors import safe_open

    from engine.int8store import INT8_FILE, SCALE_SUFFIX

    folder = Path(folder)
    file = folder / "model.safetensors"
    if not file.is_file():
        file = folder / INT8_FILE
    total = 0
    with safe_open(str(file), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            if name.endswith(SCALE_SUFFIX):
                continue
            n = 1
            for d in f.get_slice(name).get_shape():
                n *= d
            total += n
    return total
