"""Loading a causal LM (and optionally a LoRA adapter) for play.

Supports a local folder or a hub name, an adapter folder (peft), the dtype, 4-bit
NF4 with bitsandbytes on a GPU, float32/bfloat16 on a CPU. ``trust_remote_code`` is
always off and only safetensors weights are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from loguru import logger

from engine.config import ModelConfig
from engine.errors import ModelLoadError

BUNDLED_MODEL_ENV = "MISTRAL_CHESS_MODEL"


@dataclasses.dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel (possibly a PeftModel)
    tokenizer: Any
    device: str
    dtype: str
    quantization: str
    source: str  # what was loaded, for `info string`
    max_positions: int
    window_plies: int = 0  # the model folder's board windows (engine_prompt.yaml), 0 = whole games


def bundled_model_dir() -> Path | None:
    """The model used when none is configured: $MISTRAL_CHESS_MODEL, else the bundled one."""
    env = os.environ.get(BUNDLED_MODEL_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent / "data" / "bundled-model"
    if (here / "config.json").is_file():
        return here
    return None


PROMPT_FILE = "engine_prompt.yaml"  # how the model wants its prompt (written by the trainer)


def read_window_plies(path: str, adapter: str = "") -> int:
    """``window_plies`` from the model's :data:`PROMPT_FILE` (the adapter's folder first,
    then the model's; the paths as :func:`resolve_paths` gives them), 0 when neither has
    one. A hub name has none."""
    import yaml

    for folder in (adapter, path):
        f = Path(folder).expanduser() / PROMPT_FILE if folder else None
        if f is None or not f.is_file():
            continue
        try:
            data = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelLoadError(f"{f}: unreadable ({exc})") from None
        value = data.get("window_plies", 0) if isinstance(data, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModelLoadError(f"{f}: window_plies must be an integer >= 0, not {value!r}")
        return value
    return 0


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but torch sees no CUDA GPU (use device: cpu or auto)")
    return device


def _hub_token(cfg: ModelConfig) -> str | None:
    return os.environ.get(cfg.token_env) if cfg.token_env else None


def _read_adapter_base(adapter_dir: Path) -> str | None:
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        return None
    try:
        return json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg_file}: unreadable adapter config ({exc})") from None


def resolve_paths(cfg: ModelConfig) -> tuple[str, str]:
    """(base model path or hub name, adapter path or '')."""
    path, adapter = cfg.path, cfg.adapter
    if path and Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file() and not adapter:
        # A folder holding only an adapter: the base comes from its config.
        base = _read_adapter_base(Path(path))
        if not base:
            raise ModelLoadError(f"{path}: adapter folder without base_model_name_or_path; give model.path as well")
        path, adapter = base, path
    if not path and adapter:
        path = _read_adapter_base(Path(adapter)) or ""
    if not path:
        bundled = bundled_model_dir()
        if bundled is None:
            raise ModelLoadError(
                "no model configured and no bundled model installed: set model.path "
                "(UCI option ModelPath, or --model) to a local folder or a hub name"
            )
        path = str(bundled)
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter folder {adapter!r} has no adapter_config.json")
    # "org/name" is a hub name; a path that starts like a path must exist here.
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise ModelLoadError(f"model folder not found: {path}")
    return path, adapter


def _count_params_from_config(config: Any) -> int:
    h = getattr(config, "hidden_size", 0)
    n = getattr(config, "num_hidden_layers", 0)
    inter = getattr(config, "intermediate_size", 4 * h)
    vocab = getattr(config, "vocab_size", 0)
    return int(n * (4 * h * h + 3 * h * inter) + 2 * vocab * h)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load tokenizer, model and adapter as ``cfg`` says; errors are ModelLoadError."""
    try:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from engine.int8store import load_causal_lm
    except ImportError as exc:  # pragma: no cover - install problem
        raise ModelLoadError(f"torch/transformers are not installed: {exc}") from None

    path, adapter = resolve_paths(cfg)
    window = read_window_plies(path, adapter)  # before the weights: a broken file fails fast
    device = resolve_device(cfg.device)
    token = _hub_token(cfg)
    common: dict[str, Any] = {"trust_remote_code": False, "local_files_only": cfg.local_files_only}
    if token:
        common["token"] = token
    if cfg.revision:
        common["revision"] = cfg.revision
    if cfg.threads and device == "cpu":
        torch.set_num_threads(cfg.threads)

    try:
        hf_config = AutoConfig.from_pretrained(path, **common)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config of {path!r}: {exc}") from None

    quant = cfg.quantization
    if quant == "auto":
        quant = "nf4" if device == "cuda" and _count_params_from_config(hf_config) > 1_000_000_000 else "none"
    if quant == "nf4" and device != "cuda":
        raise ModelLoadError("4-bit NF4 needs a CUDA GPU (bitsandbytes); on a CPU use quantization: none")

    dtype_name = cfg.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)

    kwargs: dict[str, Any] = dict(common, dtype=dtype, use_safetensors=True)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant == "nf4":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise ModelLoadError("quantization nf4 needs bitsandbytes: pip install 'mistral-chess[gpu]'") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}

    tok_source = adapter if adapter and _has_tokenizer(Path(adapter)) else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_source, **common)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {tok_source!r}: {exc}") from None

    logger.info("loading model {} (device={}, dtype={}, quantization={})", path, device, dtype_name, quant)
    model: Any
    try:
        model = load_causal_lm(path, config=hf_config, **kwargs)  # model.safetensors, or int8 weights (engine.int8store)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model {path!r}: {exc}") from None
    if quant != "nf4":
        model.to(device)

    if adapter:
        try:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the LoRA adapter {adapter!r}: {exc}") from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    max_pos = int(getattr(hf_config, "max_position_embeddings", 4096) or 4096)
    source = path + (f" + adapter {adapter}" if adapter else "")
    if window:
        source += f", board windows of {window} plies"
    return LoadedModel(model, tokenizer, device, dtype_name, quant, source, max_pos, window)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
