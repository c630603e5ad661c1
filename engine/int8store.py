"""8-bit weight storage for small models shipped inside a size limit.

A model folder may hold ``model.int8.safetensors`` instead of ``model.safetensors``:
every 2-D weight (the projections and the embedding) is stored as int8 with float32
scales, one per row or one per group of consecutive weights of a row (symmetric,
round to nearest: ``w ~ q * scale``, ``scale = max|group| / 127``); everything else
(norms) keeps its dtype. Named projections can be stored in 4 bits instead
(``int4_modules``: two weights a byte, levels -7..7, a float16 scale per ``int4_group``
weights of a row, ``scale = max|group| / 7``): a model trained for that rounding
(quantization-aware training, ``training/qat.py``, which calls :func:`fake_int4` here, the
same rounding) fits about 1.5 times the parameters in the same bytes. Loading
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

INT8_FILE = "model.int8.safetensors"
FORMAT = "mistral-chess-int8-rowwise-v1"
FORMAT_INT4 = "mistral-chess-int8-int4-v2"  # written when some tensors are int4; int8-only files stay v1
FORMATS = (FORMAT, FORMAT_INT4)
SCALE_SUFFIX = ".int8_scale"
INT4_SCALE_SUFFIX = ".int4_scale"


def int4_scale(w: Any, group: int) -> Any:
    """The float16-representable scale (as float32) of each ``group`` weights of a row of ``w``."""
    import torch

    rows, cols = w.shape
    if group <= 0 or cols % group:
        raise ValueError(f"int4 storage needs a group that divides the row: {tuple(w.shape)} by {group}")
    amax = w.detach().float().view(rows, cols // group, group).abs().amax(dim=2, keepdim=True)
    # float16 holds the stored scale; its smallest normal number keeps a zero group finite
    return (amax / 7.0).clamp(min=2.0**-14).to(torch.float16).float()


def int4_levels(w: Any, group: int) -> tuple[Any, Any]:
    """The int4 rounding of ``w`` (rows x cols), the one the store writes and
    :func:`fake_int4` computes with: levels -7..7 as float32 (rows, cols // group, group)
    and their scales (rows, cols // group, 1)."""
    import torch

    rows, cols = w.shape
    scale = int4_scale(w, group)
    return torch.round(w.detach().float().view(rows, cols // group, group) / scale).clamp(-7, 7), scale


def fake_int4(w: Any, group: int) -> Any:
    """``w`` rounded to what int4 storage keeps of it (same dtype and shape): the values a
    model loaded from :data:`INT8_FILE` computes with. Quantization-aware training uses it."""
    q, scale = int4_levels(w, group)
    return (q * scale).view(w.shape).to(w.dtype)


def is_int4_name(name: str, modules: Iterable[str]) -> bool:
    """Whether the tensor ``name`` (``model.layers.3.mlp.up_proj.weight``) belongs to one of
    ``modules`` (``up_proj``: the last part of a module's name)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in set(modules)


def is_int8_folder(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / INT8_FILE).is_file() and not (folder / "model.safetensors").is_file()


def quantize_state_dict(
    state: dict[str, Any], *, group: int = 0, int4_modules: Iterable[str] = (), int4_group: int = 32
) -> dict[str, Any]:
    """int8 values and float32 scales for the 2-D floating tensors; the rest as they are.

    ``group`` 0: one scale per row; > 0: one per ``group`` consecutive weights of a row
    (rows whose length it does not divide get one scale per row). The weights of
    ``int4_modules`` are stored in 4 bits instead: uint8 bytes holding two levels each
    (the even column in the low half), a float16 scale per ``int4_group`` weights."""
    import torch

    int4_modules = tuple(int4_modules)
    out: dict[str, Any] = {}
    for name, t in state.items():
        if int4_modules and t.dim() == 2 and t.is_floating_point() and is_int4_name(name, int4_modules):
            rows, cols = t.shape
            if cols % 2 or cols % int4_group:
                raise ValueError(f"{name}: {cols} columns cannot be stored in 4 bits with a scale per {int4_group}")
            q, scale = int4_levels(t.detach().cpu(), int4_group)
            u = (q.view(rows, cols) + 8).to(torch.uint8)  # 1..15
            out[name] = (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()
            out[name + INT4_SCALE_SUFFIX] = scale.squeeze(2).to(torch.float16).contiguous()
        elif t.dim() == 2 and t.is_floating_point():
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
        if name.endswith((SCALE_SUFFIX, INT4_SCALE_SUFFIX)):
            continue
        if t.dtype == torch.uint8:  # int4: two levels a byte
            scale = stored.get(name + INT4_SCALE_SUFFIX)
            if scale is None:
                raise ValueError(f"{INT8_FILE}: int4 tensor {name!r} has no {name + INT4_SCALE_SUFFIX!r}")
            rows, half = t.shape
            cols = 2 * half
            per = scale.float().reshape(rows, -1)
            if cols % per.shape[1]:
                raise ValueError(f"{INT8_FILE}: {name!r} has {cols} columns, {per.shape[1]} scale groups a row")
            q = torch.stack(((t & 15).to(torch.int16), (t >> 4).to(torch.int16)), dim=2).view(rows, cols) - 8
            g = cols // per.shape[1]
            out[name] = (q.float().view(rows, -1, g) * per[:, :, None]).view(rows, cols).to(dtype)
        elif t.dtype == torch.int8:
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


def save_quantized(
    state: dict[str, Any], file: str | Path, *, group: int = 0, int4_modules: Iterable[str] = (), int4_group: int = 32
) -> Path:
    """``state`` written as :data:`INT8_FILE`-style storage to ``file``."""
    stored = quantize_state_dict(state, group=group, int4_modules=int4_modules, int4_group=int4_group)
    return write_quantized(stored, file)


def write_quantized(stored: dict[str, Any], file: str | Path) -> Path:
    """Tensors :func:`quantize_state_dict` made, written to ``file`` with the format's metadata."""
    import torch
    from safetensors.torch import save_file

    fmt = FORMAT_INT4 if any(t.dtype == torch.uint8 for t in stored.values()) else FORMAT
    save_file(stored, str(file), metadata={"format": "pt", "mistral_chess": fmt})
    return Path(file)


def export_int8(
    src: str | Path, dst: str | Path, *, group: int = 0, int4_modules: Iterable[str] = (), int4_group: int = 32
) -> Path:
    """Copy the model folder ``src`` (``model.safetensors``) to ``dst`` with its weights
    stored as int8 (:data:`INT8_FILE`, scales per row or per ``group`` weights; the
    weights of ``int4_modules`` as int4, a scale per ``int4_group``); other files are
    copied as they are."""
    from safetensors.torch import load_file

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
    int4_modules = tuple(int4_modules)
    state = load_file(str(weights))
    if int4_modules and not any(is_int4_name(k, int4_modules) for k in state):
        raise ValueError(f"--int4 {','.join(int4_modules)}: no weight of the model belongs to these modules")
    return save_quantized(state, dst / INT8_FILE, group=group, int4_modules=int4_modules, int4_group=int4_group)


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
    if fmt not in FORMATS:
        raise ValueError(f"{file}: format {fmt!r}, expected one of {FORMATS}")
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
