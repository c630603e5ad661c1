"""The fast adapter-training path's model changes: Liger kernels and partial checkpointing.

* :func:`apply_liger` swaps Liger's Triton kernels (liger-kernel) into a Mistral model:
  RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy, which computes the loss
  from the last hidden states in chunks so the ``tokens x vocab`` logits never exist.
  Its loss is the same completion-only sum divided by ``num_items_in_batch`` as
  transformers' own loss, so :meth:`training.trainer.Trainer.forward` does not change.
  RMSNorm, SwiGLU and the loss are patched on the model instance; RoPE can only be
  patched in transformers' Mistral module, so it holds for every Mistral model made
  afterwards in the process (Liger's RoPE computes the same values).
* :func:`checkpoint_layers` keeps activation recomputation on for only the first
  ``round(fraction * layers)`` decoder layers.

Packed rows need no change here: transformers builds a block-diagonal causal mask when
``position_ids`` restart inside a row and no attention mask is given (``sdpa``, ``eager``
and ``flex_attention``), so no example attends to another (tests/training/test_fast.py).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from loguru import logger

from training.config import FastSection
from training.errors import ResourceError


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def liger_wanted(fast: FastSection, device: str) -> bool:
    """Whether to use Liger, as ``fast.liger`` says; refuses a run that requires it but cannot have it."""
    if not fast.enabled or fast.liger is False or not fast.liger_kernels:
        return False
    if device == "cuda" and liger_installed():
        return True
    why = "it needs a CUDA GPU" if device != "cuda" else "liger-kernel (or triton) is not installed"
    if fast.liger is True:
        raise ResourceError(f"fast.liger=true but {why}: pip install liger-kernel, or set fast.liger=auto or false")
    if device == "cuda":
        logger.warning("fast.liger=auto: {}; training with the plain kernels (pip install liger-kernel)", why)
    return False


def apply_liger(model: Any, kernels: list[str]) -> list[str]:
    """Liger's kernels on ``model`` (a MistralForCausalLM, possibly inside a peft model); returns the ones applied."""
    from liger_kernel.transformers import apply_liger_kernel_to_mistral

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = getattr(base.config, "model_type", "")
    if kind != "mistral":
        logger.warning("fast.liger: no Liger kernels for model_type {!r} (only mistral); plain kernels", kind)
        return []
    apply_liger_kernel_to_mistral(
        rope="rope" in kernels,
        rms_norm="rms_norm" in kernels,
        swiglu="swiglu" in kernels,
        fused_linear_cross_entropy="fused_linear_cross_entropy" in kernels,
        cross_entropy=False,
        model=base,
    )
    logger.info("fast: Liger kernels {}", ", ".join(kernels))
    return list(kernels)


def checkpoint_layers(model: Any, fraction: float) -> int:
    """Leave checkpointing on in the first ``round(fraction * n)`` decoder layers only; returns that count."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    keep = round(fraction * len(layers))
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < keep
    return keep
