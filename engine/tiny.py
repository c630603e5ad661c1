"""Small random-weight Mistral models with the real Mistral tokenizer, made offline.

Used by the plumbing demo and by the tests: every code path that serves
Mistral-7B runs on them. The tokenizer is Mistral-7B v0.1's SentencePiece model as
shipped inside the ``mistral-common`` package (``pip install 'mistral-chess[mistral-tokenizer]'``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError

# Mistral-7B-Instruct v0.1/v0.2 chat template (as in its tokenizer_config.json).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def mistral_tokenizer_model() -> Path:
    """Path of Mistral-7B's ``tokenizer.model`` inside the mistral-common package."""
    try:
        import mistral_common
    except ImportError:
        raise ModelLoadError(
            "the offline Mistral tokenizer comes from the mistral-common package: "
            "pip install 'mistral-chess[mistral-tokenizer]'"
        ) from None
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise ModelLoadError(f"mistral-common is installed but {path} is missing")
    return path


def write_mistral_tokenizer(folder: str | Path, *, chat_template: bool = True) -> Path:
    """Write a Hugging Face tokenizer folder for the real Mistral-7B tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_tokenizer_model(), folder / "tokenizer.model")
    cfg: dict[str, Any] = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 32768,
    }
    if chat_template:
        cfg["chat_template"] = MISTRAL_CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    # Convert once to tokenizer.json so later loads need neither protobuf nor sentencepiece.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def make_tiny_mistral(
    folder: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 4096,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """A random-weight ``MistralForCausalLM`` saved as safetensors with the Mistral tokenizer."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        write_mistral_tokenizer(folder)
    else:
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(folder))
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
