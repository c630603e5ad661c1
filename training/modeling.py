"""The model side of training, in one place: tokenizer, model (QLoRA / LoRA / full /
from scratch), the batch collator, memory estimate, and saving what the engine loads.

The fast mode (``fast.enabled``) changes :func:`prepare_for_training` only: no fp32
upcast of the frozen base, partial checkpointing and Liger kernels (:mod:`training.kernels`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from training.config import TrainConfig
from training.errors import DataError, ResourceError, TrainingError

GIB = 1024**3


# -- distributed environment ---------------------------------------------------------------------


def using_fsdp() -> bool:
    """True under ``accelerate launch`` with an FSDP config (accelerate sets this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# -- tokenizer -------------------------------------------------------------------------------------


def resolve_tokenizer(cfg: TrainConfig, output_dir: Path) -> Any:
    """The training tokenizer. A tokenizer saved in ``output_dir/tokenizer`` (by an earlier
    run of this config) wins, so a resumed run never re-trains or re-derives it."""
    from transformers import AutoTokenizer

    saved = output_dir / "tokenizer"
    if (saved / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(saved))
    else:
        spec = cfg.model.tokenizer
        if spec == "chess-bpe":
            from training.chess_tokenizer import train_chess_tokenizer

            tok = train_chess_tokenizer(
                cfg.data.path, cfg.model.tokenizer_vocab_size, board_squares=cfg.model.tokenizer_board_squares
            )
        elif spec == "mistral":
            from engine.tiny import write_mistral_tokenizer

            tok = AutoTokenizer.from_pretrained(str(write_mistral_tokenizer(saved)))
        else:
            source = spec or cfg.model.path
            if not source:
                raise TrainingError("model.tokenizer: a scratch model needs a tokenizer (mistral, chess-bpe or a folder)")
            try:
                kwargs = {"revision": cfg.model.revision} if cfg.model.revision and not spec else {}
                tok = AutoTokenizer.from_pretrained(source, **kwargs)
            except Exception as exc:
                raise TrainingError(f"cannot load the tokenizer {source!r}: {exc}") from None
        if not getattr(tok, "is_fast", False):
            raise TrainingError("only fast (tokenizers-backed) tokenizers are supported")
        if cfg.model.tokenizer_board_squares:
            from training.chess_tokenizer import with_board_squares

            try:
                with_board_squares(tok)
            except DataError as exc:
                raise TrainingError(f"{spec or cfg.model.path!r}: {exc}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


# -- memory ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MemoryEstimate:
    weights: float
    trainable: float  # parameters + gradients + Adam moments of what is trained
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.logits + self.overhead

    def describe(self) -> str:
        parts = ("weights", "trainable", "activations", "logits", "overhead")
        return ", ".join(f"{p} {getattr(self, p) / GIB:.1f}" for p in parts) + f" (total {self.total / GIB:.1f} GiB)"


def count_params(hf_config: Any) -> dict[str, int]:
    """Parameters of a Mistral/Llama-shaped decoder from its config (no weights needed)."""
    h = int(hf_config.hidden_size)
    n = int(hf_config.num_hidden_layers)
    inter = int(getattr(hf_config, "intermediate_size", 4 * h))
    heads = int(hf_config.num_attention_heads)
    kv = int(getattr(hf_config, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or h // heads)
    vocab = int(hf_config.vocab_size)
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    return {
        "linear": n * (attn + mlp),
        "embed": vocab * h * (1 if tied else 2),
        "norm": (2 * n + 1) * h,
        "layers": n,
        "hidden": h,
        "inter": inter,
        "heads": heads,
        "kv": kv,
        "head_dim": head_dim,
        "vocab": vocab,
    }


def lora_params(cfg: TrainConfig, p: dict[str, int]) -> int:
    h, inter, hd = p["hidden"], p["inter"], p["head_dim"]
    shapes = {
        "q_proj": (h, p["heads"] * hd),
        "k_proj": (h, p["kv"] * hd),
        "v_proj": (h, p["kv"] * hd),
        "o_proj": (p["heads"] * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    per_layer = sum(cfg.lora.lora_r * (a + b) for m, (a, b) in shapes.items() if m in cfg.lora.target_modules)
    return per_layer * p["layers"]


def estimate_memory(cfg: TrainConfig, hf_config: Any, *, world: int = 1, fsdp: bool = False) -> MemoryEstimate:
    """Peak GPU memory of one training process, from the config alone (a deliberate
    under-estimate: a run it rejects cannot fit; one it accepts may still be tight)."""
    p = count_params(hf_config)
    b, seq = cfg.train.per_device_train_batch_size, cfg.data.max_length
    act_bytes = 2 if cfg.train.bf16 else 4
    if cfg.quantization.load_in_4bit:
        # NF4: 4 bits + double-quantised block constants; embeddings / norms stay 16-bit (fp32
        # after prepare_model_for_kbit_training, which upcasts them outside FSDP).
        # The fast mode skips that upcast.
        weights = p["linear"] * 0.516 + (p["embed"] + p["norm"]) * (2 if fsdp or cfg.fast.enabled else 4)
    else:
        weights = (p["linear"] + p["embed"] + p["norm"]) * (4 if cfg.model.dtype == "float32" else 2)
    if cfg.lora.enabled:
        trainable = lora_params(cfg, p) * 16.0  # fp32 weight + grad + two Adam moments
    else:
        trainable = (p["linear"] + p["embed"] + p["norm"]) * 16.0
        weights = 0.0  # counted in trainable (fp32 master weights)
    if fsdp and world > 1:
        weights /= world
        trainable /= world
    h, inter, n = p["hidden"], p["inter"], p["layers"]
    per_layer = b * seq * (18 * h + 6 * inter) * act_bytes
    recomputed = round(cfg.train.gradient_checkpointing_fraction * n) if cfg.train.gradient_checkpointing else 0
    activations = recomputed * b * seq * h * act_bytes + (n - recomputed) * per_layer + (per_layer if recomputed else 0)
    logits = b * seq * p["vocab"] * (act_bytes + 8)  # logits, fp32 upcast and its gradient
    return MemoryEstimate(weights, trainable, activations, logits, overhead=1.0 * GIB)


def check_memory(cfg: TrainConfig, hf_config: Any, device: str) -> MemoryEstimate | None:
    """Refuse a CUDA run whose estimate exceeds the GPU's memory, before loading anything."""
    if device != "cuda":
        return None
    import torch

    est = estimate_memory(cfg, hf_config, world=world_size(), fsdp=using_fsdp())
    index = int(os.environ.get("LOCAL_RANK", "0"))
    free, total = torch.cuda.mem_get_info(index)
    logger.info("memory estimate per GPU: {}; GPU {}: {:.1f} GiB free of {:.1f}", est.describe(), index, free / GIB, total / GIB)
    if cfg.train.check_memory and est.total > free:
        hint = "enable quantization.load_in_4bit, lower train.per_device_train_batch_size or data.max_length"
        if not cfg.train.gradient_checkpointing:
            hint += ", or enable train.gradient_checkpointing"
        raise ResourceError(
            f"the model does not fit: about {est.total / GIB:.1f} GiB needed ({est.describe()}), "
            f"{free / GIB:.1f} GiB free on GPU {index}; {hint} (train.check_memory=false skips this check)"
        )
    return est


# -- model ---------------------------------------------------------------------------------------------


def torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def hf_config_for(cfg: TrainConfig, tokenizer: Any) -> Any:
    """The model's transformers config: read from ``model.path`` or made for a scratch model."""
    from transformers import AutoConfig, MistralConfig

    m = cfg.model
    if m.init == "scratch":
        return MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads,
            max_position_embeddings=m.max_position_embeddings,
            sliding_window=None,
            tie_word_embeddings=m.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    try:
        kwargs = {"revision": m.revision} if m.revision else {}
        hf_config = AutoConfig.from_pretrained(m.path, **kwargs)
    except Exception as exc:
        raise TrainingError(f"cannot read the model config of {m.path!r}: {exc}") from None
    vocab = getattr(hf_config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise TrainingError(
            f"the tokenizer has {len(tokenizer)} tokens but {m.path!r} embeds only {vocab}: "
            f"it is not this model's tokenizer (model.tokenizer={m.tokenizer!r})"
        )
    return hf_config


# A function that returns the (possibly quantized) base model instead of loading it from
# model.path: the GPU benchmark builds a random 7B model in memory this way.
BaseLoader = Callable[[TrainConfig, Any, str], Any]


def load_base_model(cfg: TrainConfig, hf_config: Any, device: str) -> Any:
    """The base model from ``model.path`` (4-bit when configured), or a new scratch model."""
    import torch
    from transformers import AutoModelForCausalLM

    m, q = cfg.model, cfg.quantization
    if m.init == "scratch":
        torch.manual_seed(cfg.train.seed)
        hf_config._attn_implementation = m.attn_implementation
        return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(m.dtype, device), "attn_implementation": m.attn_implementation}
    if m.revision:
        kwargs["revision"] = m.revision
    if q.load_in_4bit:
        if device != "cuda":
            raise ResourceError("quantization.load_in_4bit needs a CUDA GPU (bitsandbytes); set it false on a CPU")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise ResourceError("quantization.load_in_4bit needs bitsandbytes: pip install 'mistral-chess[gpu]'") from None
        fsdp = using_fsdp()
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
            # FSDP shards float tensors only: store the 4-bit weights in a bf16 container.
            bnb_4bit_quant_storage=torch.bfloat16 if fsdp else torch.uint8,
        )
        if not fsdp:
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    elif not cfg.lora.enabled:
        kwargs["dtype"] = torch.float32  # full fine-tuning keeps fp32 master weights
    try:
        from engine.int8store import load_causal_lm

        return load_causal_lm(m.path, config=hf_config, **kwargs)  # model.safetensors, or int8 weights (engine.int8store)
    except Exception as exc:
        raise TrainingError(f"cannot load the model {m.path!r}: {exc}") from None


def build_model(
    cfg: TrainConfig, tokenizer: Any, hf_config: Any, device: str, *, base_loader: BaseLoader | None = None
) -> Any:
    """The model to train, on ``device``: LoRA over a (4-bit) base, or all weights."""
    model = (base_loader or load_base_model)(cfg, hf_config, device)
    return prepare_for_training(model, cfg, device)


def enable_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """Activation (gradient) checkpointing in every decoder layer, by the name the installed
    transformers has: ``activation_checkpointing_enable`` from 5.2x on, where the older
    ``gradient_checkpointing_enable`` warns that it goes in v6."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_for_training(model: Any, cfg: TrainConfig, device: str) -> Any:
    """Gradient checkpointing, k-bit preparation and the LoRA adapter, as the config says."""
    import torch

    q = cfg.quantization
    fsdp = using_fsdp()
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if cfg.fast.enabled:
        # With LoRA the frozen base stays in its own dtype (bf16): peft's
        # prepare_model_for_kbit_training would upcast embeddings, norms and lm_head to fp32,
        # and with them the residual stream. Non-reentrant checkpointing needs no input that
        # requires grad. Full training (no LoRA) keeps every weight trainable.
        if cfg.lora.enabled:
            for param in model.parameters():
                param.requires_grad_(False)
        if cfg.train.gradient_checkpointing:
            enable_checkpointing(model, gc_kwargs)
    elif q.load_in_4bit and not fsdp:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif cfg.train.gradient_checkpointing:
        enable_checkpointing(model, gc_kwargs)
        if cfg.lora.enabled:
            model.enable_input_require_grads()
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.lora_r,
            lora_alpha=cfg.lora.lora_alpha,
            lora_dropout=cfg.lora.lora_dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
            bias="none",
        )
        torch.manual_seed(cfg.train.seed)  # LoRA A matrices are random: fixed by the seed
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise TrainingError(f"lora.target_modules {cfg.lora.target_modules}: {exc}") from None
        if fsdp:
            # FSDP flattens parameters of one dtype: keep adapters in the base's bf16.
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
    if not q.load_in_4bit:
        model.to(device)  # a 4-bit model is placed where it was quantized
    if cfg.qat.int4_modules:
        from training.qat import apply_fake_int4

        try:
            swapped = apply_fake_int4(model, cfg.qat.int4_modules, cfg.qat.int4_group)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        logger.info("qat: {} projections train with int4-rounded weights (a scale per {})", len(swapped), cfg.qat.int4_group)
    if cfg.train.gradient_checkpointing:
        from training.kernels import checkpoint_layers

        n = checkpoint_layers(model, cfg.train.gradient_checkpointing_fraction)
        logger.info("gradient checkpointing in {} decoder layer(s)", n)
    if cfg.fast.enabled:
        from training.kernels import apply_liger, liger_wanted

        if liger_wanted(cfg.fast, device):
            apply_liger(model, list(cfg.fast.liger_kernels))
    model.train()  # from_pretrained returns eval mode: no dropout, no checkpointing
    return model


def build_collator(split: Any, rows: Any, tokenizer: Any, *, width: int = 0, rules: bool = False) -> Any:
    """The batch collator; ``width`` > 0 pads every row to that width (one shape for a
    compiled forward), otherwise to the batch's longest row rounded up to 8. ``rules``: the
    batches carry the rules loss's targets (the split's legal tokens)."""
    from training.data import PackedCollator, move_start_tokens

    starts = move_start_tokens(tokenizer) if rules else None
    return PackedCollator(split, rows, pad_id=int(tokenizer.pad_token_id), pad_to_multiple_of=width or 8, move_starts=starts)


def trainable_state(model: Any) -> dict[str, Any]:
    """The trained tensors only (LoRA weights, or everything for full training), by name."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [k for k, p in params.items() if p.requires_grad and k not in state]
    unknown = [k for k in state if k not in params]
    if missing or unknown:
        raise TrainingError(f"checkpoint does not match the model (missing {missing[:3]}, unknown {unknown[:3]})")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))


def count_trainable(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# -- what the engine loads ------------------------------------------------------------------------------


def save_for_engine(model: Any, tokenizer: Any, cfg: TrainConfig, output_dir: Path, *, state_dict: Any = None) -> None:
    """``output_dir`` as the engine loads it: an adapter (adapter_config.json +
    adapter_model.safetensors) whose base is an absolute path or a hub name, or a full
    model (config.json + model.safetensors); plus the tokenizer."""
    import torch

    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.lora.enabled:
        # A copy: transformers (5.25 at least) empties the dict it is given as it writes.
        model.save_pretrained(str(output_dir), safe_serialization=True,
                              state_dict=None if state_dict is None else dict(state_dict))
        _absolute_base(output_dir / "adapter_config.json", cfg.model.path)
    else:
        save_dtype = torch_dtype(cfg.train.save_dtype, "cpu") if cfg.train.save_dtype != "auto" else torch.float32
        if state_dict is None:
            state_dict = model.state_dict()
        state_dict = {k: v.detach().to("cpu", save_dtype) for k, v in state_dict.items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state_dict.pop("lm_head.weight", None)  # the copy would break the tie (and double the size)
        model.config.use_cache = True
        model.config.dtype = str(save_dtype).replace("torch.", "")
        # save_pretrained gets a copy of the dict: transformers 5.25 pops every tensor it writes
        # out of the dict it is given (for a model built from its config, such as one loaded
        # from an int8 folder), which left the 4-bit store below with no tensor at all.
        model.save_pretrained(str(output_dir), safe_serialization=True, state_dict=dict(state_dict))
        model.config.use_cache = False
        if cfg.qat.int4_modules:
            # A model trained for the 4-bit store is saved in it: the engine then plays the
            # weights it was trained with (checkpoints keep the full-precision ones).
            from engine.int8store import INT8_FILE, save_quantized

            save_quantized(state_dict, output_dir / INT8_FILE, group=cfg.qat.int8_group,
                           int4_modules=cfg.qat.int4_modules, int4_group=cfg.qat.int4_group)
            (output_dir / "model.safetensors").unlink()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is not None:
        # Left by the batched generation of the evaluation (padding=True); a model folder's
        # tokenizer.json carries no padding state, so the same model saves the same file.
        backend.no_padding()
    tokenizer.save_pretrained(str(output_dir))
    write_engine_prompt(cfg, output_dir)


def write_engine_prompt(cfg: TrainConfig, output_dir: Path) -> None:
    """The engine's prompt settings the data was built with, as ``engine_prompt.yaml``
    (read by the engine's ``prompt.window_plies: -1``): only for board windows, the one
    setting a model cannot be played without."""
    import yaml

    from engine.model import PROMPT_FILE

    built = Path(cfg.data.path) / "dataset_config.yaml"
    if not built.is_file():
        return
    examples = (yaml.safe_load(built.read_text()) or {}).get("examples") or {}
    window = int(examples.get("window_plies") or 0)
    if window:
        (output_dir / PROMPT_FILE).write_text(
            "# written by the trainer: the data set was built with examples.window_plies\n"
            f"window_plies: {window}\n"
        )


def export_checkpoint(run_dir: Path, checkpoint: Path, dest: Path) -> None:
    """A checkpoint of the run in ``run_dir`` (its trained tensors) as a folder the engine
    loads, written to ``dest`` through a temporary folder, so it is never left half-written.
    An existing ``dest`` (an earlier export of the same checkpoint) is replaced."""
    import shutil

    from safetensors.torch import load_file

    from training.config import load_train_config

    cfg = load_train_config(run_dir / "training_config.yaml")
    tok = resolve_tokenizer(cfg, run_dir)
    model = load_base_model(cfg, hf_config_for(cfg, tok), "cpu")
    load_trainable_state(model, load_file(str(checkpoint / "trainable.safetensors")))
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_for_engine(model, tok, cfg, tmp)
    old = dest.with_name(dest.name + ".old")
    if dest.is_dir():  # rename() cannot replace a non-empty folder: move the old one aside first
        shutil.rmtree(old, ignore_errors=True)
        dest.replace(old)
    tmp.replace(dest)
    shutil.rmtree(old, ignore_errors=True)


def _absolute_base(adapter_config: Path, base: str) -> None:
    """peft writes the base path as given; the engine resolves it from anywhere, so make a
    local base absolute (hub names stay as they are)."""
    data = json.loads(adapter_config.read_text())
    local = Path(base).expanduser()
    if base and local.exists():
        data["base_model_name_or_path"] = str(local.resolve())
        adapter_config.write_text(json.dumps(data, indent=2))
