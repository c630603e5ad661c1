"""``mistral-chess merge``: fold a LoRA adapter into its base model and save a plain model.

The base is loaded unquantized (bf16 by default: merging into 4-bit weights would round
the adapter's update away) on the CPU unless told otherwise, the adapter applied with
peft's ``merge_and_unload``, and the result saved as safetensors with the tokenizer,
ready for ``mistral-chess uci --model OUT`` without peft.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loguru import logger

from training.errors import TrainingError


def merge_adapter(
    adapter: str | Path, out: str | Path, *, base: str | None = None, dtype: str = "bfloat16", device: str = "cpu"
) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(adapter)
    out = Path(out)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise TrainingError(f"{adapter}: not an adapter folder (no adapter_config.json)")
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"output folder {out} exists and is not empty")
    if not any((adapter / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise TrainingError(f"{adapter}: no adapter_model.safetensors")
    adapter_cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    base = base or adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise TrainingError(f"{cfg_file} names no base model: give --base")
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().is_dir():
        raise TrainingError(f"base model folder not found: {base}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: torch sees no CUDA GPU")
    logger.info("merging {} into {} ({}, on {})", adapter, base, dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
        model = model.to(device)  # type: ignore[arg-type]
    except Exception as exc:
        raise TrainingError(f"cannot load the base model {base!r}: {exc}") from None
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as exc:
        raise TrainingError(f"cannot apply the adapter {adapter}: {exc}") from None
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tok_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base)
    AutoTokenizer.from_pretrained(str(tok_source)).save_pretrained(str(out))
    (out / "merge_info.json").write_text(json.dumps({"base": base, "adapter": str(adapter.resolve()), "dtype": dtype}, indent=1))
    return out
