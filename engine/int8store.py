"""8-bit weight storage for small models shipped inside a size limit.

A model folder may hold ``model.int8.safetensors`` instead of ``model.safetensors``:
every 2-D weight (the projections and the embedding) is stored as int8 with float32
scales, one per row or one per group of consecutive weights of a row (symmetric,
round to nearest: ``w ~ q * scale``, ``scale = max|group| / 127``); everything else
(norms) keeps its dtype. Loading
dequantizes to the compute dtype, so the model runs as before at half the disk size
of bfloat16 weights: the bundled model's 40 MB limit holds a model of about twice
the parameters.

Plain ``transformers.from_pretrained`` does not read this file (it looks for
``model.safetensors`` and says so); :func:`load_causal_lm` reads either, and the
engine's and the trainer's loaders go through it. ``mistral-chess export-int8 SRC
DST`` writes such a folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

INT8_FILE = "model.int8.safetensors"
FORMAT = "mistral-chess-int8-rowwise-v1"
SCALE_SUFFIX = ".int8_scale"


def is_int8_folder(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / INT8_FILE).is_file() and not (folder / "model.safetensors").is_file()


def quantize_state_dict(state: dict[str, Any], *, group: int = 0) -> dict[str, Any]:
    """int8 values and float32 scales for the 2-D floating tensors; the rest as they are.

    ``group`` 0: one scale per row; > 0: one per ``group`` consecutive weights of a row
    (rows whose length it does not divide get one scale per row)."""
    import torch

    out: dict[str, Any] = {}
    for name, t in state.items():
        if t.dim() == 2 and t.is_floating_point():
            w = t.detach().float().cpu()
            rows, cols = w.shape
            g = group if group > 0 and cols % group == 0 else cols
            wg = w.view(rows, cols // g, g)
            scale = (wg.abs().amax(dim=2, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
            out[name] = torch.round(wg / scale).clamp(-127, 127).to(torch.int8).view(rows, cols).contiguous()
            scale = scale.squeeze(2)
            out[name + SCALE_SUFFIX] = (scale.squeeze(1) if g == cols else scale).contiguous()
        else:
            out[name] = t.detach().cpu().contiguous()
    return out


def dequantize_state_dict(stored: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """The tensors of :func:`quantize_state_dict` back as ``dtype`` weights."""
    import torch

    out: dict[str, Any] = {}
    for name, t in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if t.dtype == torch.int8:
            scale = stored.get(name + SCALE_SUFFIX)
            if scale is None:
                raise ValueError(f"{INT8_FILE}: int8 tensor {name!r} has no {name + SCALE_SUFFIX!r}")
            rows, cols = t.shape
            per = scale.float().reshape(rows, -1)  # one scale per row, or per group of a row
            if cols % per.shape[1]:
                raise ValueError(f"{INT8_FILE}: {name!r} has {cols} columns, {per.shape[1]} scale groups a row")
            g = cols // per.shape[1]
            out[name] = (t.float().view(rows, -1, g) * per[:, :, None]).view(rows, cols).to(dtype)
        else:
            out[name] = t.to(dtype) if t.is_floating_point() else t
    return out


def export_int8(src: str | Path, dst: str | Path, *, group: int = 0) -> Path:
    """Copy the model folder ``src`` (``model.safetensors``) to ``dst`` with its weights
    stored as int8 (:data:`INT8_FILE`, scales per row or per ``group`` weights); other
    files are copied as they are."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{src}: no model.safetensors (sharded or adapter-only folders are not supported)")
    if dst.resolve() == src.resolve():
        raise ValueError("export-int8 writes a new folder: give another destination")
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", INT8_FILE):
            shutil.copy2(f, dst / f.name)
    stale = dst / "model.safetensors"
    if stale.exists():
        stale.unlink()
    save_file(quantize_state_dict(load_file(str(weights)), group=group), str(dst / INT8_FILE),
              metadata={"format": "pt", "mistral_chess": FORMAT})
    return dst / INT8_FILE


def load_causal_lm(path: str | Path, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)``, or for a folder with
    :data:`INT8_FILE` the model built from its config with the dequantized weights
    (``dtype``, ``attn_implementation`` and an already loaded ``config``, used for the
    int8 folder only, are honoured;
    quantization configs and device maps are refused: the weights are already quantized)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = kwargs.pop("config", None)
    if not is_int8_folder(path):  # transformers reads the config itself, as it always has here
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    for key in ("quantization_config", "device_map"):
        if kwargs.get(key) is not None:
            raise ValueError(f"{path} holds int8 weights ({INT8_FILE}): {key} cannot be applied to it")
    file = Path(path) / INT8_FILE
    with safe_open(str(file), framework="pt") as f:
        fmt = (f.metadata() or {}).get("mistral_chess")
    if fmt != FORMAT:
        raise ValueError(f"{file}: format {fmt!r}, expected {FORMAT!r}")
    dtype = kwargs.get("dtype") or torch.float32
    config = config or AutoConfig.from_pretrained(
        str(path), trust_remote_code=False, local_files_only=kwargs.get("local_files_only", False))
    build: dict[str, Any] = {"dtype": dtype}
    if kwargs.get("attn_implementation"):
        build["attn_implementation"] = kwargs["attn_implementation"]
    model = AutoModelForCausalLM.from_config(config, **build)
    state = dequantize_state_dict(load_file(str(file)), dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{file}: weights do not match the config (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    model.eval()
    return model
