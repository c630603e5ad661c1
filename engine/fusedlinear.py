"""Projections for the fast path: base weight and LoRA adapter in a few kernels.

A peft LoRA layer over a bitsandbytes NF4 layer costs about nine kernels per call
(dequantize the double-quantized scales, add their offset, dequantize the weight,
the product, a defensive clone, the two adapter products, the scaling, the sum).
At a few dozen tokens a move those small kernels, not the arithmetic, set the
time. :class:`FastLinear` computes the same function in four:

* NF4: the block scales are dequantized once, at set-up (float32, one number per
  64 weights: +0.45 GB for a 7B model), so each call is one dequantize kernel and
  one product (the packed weights are the module's own, not a copy);
* LoRA: the adapter is kept unmerged (merging into NF4 would re-quantize the base
  and change the model), with the scaling folded into ``B`` and the sum fused
  into the second product (``addmm``). The adapter runs in the compute dtype
  (bf16 on a GPU) where peft runs it in float32: the difference is within bf16
  rounding of the activations (the benchmark reports the end-to-end difference).

Anything else (DoRA, adapters with biases, other quantizers) is declined with a
reason and the fast path calls the modules themselves.
"""

from __future__ import annotations

from typing import Any


class NotFusable(Exception):
    pass


def _is_nf4(layer: Any) -> bool:
    weight = getattr(layer, "weight", None)
    return type(layer).__name__ in ("Linear4bit",) and getattr(weight, "quant_state", None) is not None


class FastLinear:
    """``y = x W^T + b + (x A^T) (s B)^T`` for a 2-D ``x``; built from an existing module."""

    def __init__(self, module: Any, dtype: Any, *, chunk_bytes: int = 0) -> None:
        import torch

        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        self.nf4 = _is_nf4(base)
        bias = getattr(base, "bias", None)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.weight: Any = None
        self.packed: Any = None
        self.quant_state: Any = None
        self.chunks: list[tuple[Any, Any]] = []
        if self.nf4:
            import bitsandbytes.functional as bnbf

            qs = base.weight.quant_state
            if getattr(qs, "packing_format_for_cpu", False):
                raise NotFusable("bitsandbytes repacked these weights for its CPU kernels")
            if qs.quant_type != "nf4":
                raise NotFusable(f"4-bit quant type {qs.quant_type!r}")
            if getattr(qs, "nested", False):
                absmax = bnbf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
            else:
                absmax = qs.absmax
            self.packed = base.weight.data
            absmax = absmax.float().contiguous()
            self.quant_state = bnbf.QuantState(
                absmax=absmax, shape=qs.shape, code=qs.code, blocksize=qs.blocksize,
                quant_type=qs.quant_type, dtype=dtype,
            )
            self.chunks = self._chunk(chunk_bytes, absmax, qs, dtype) if chunk_bytes > 0 else []
        elif isinstance(base, torch.nn.Linear) and type(base).__name__ == "Linear":
            w = base.weight.detach()
            self.weight = w if w.dtype == dtype else w.to(dtype)
        else:
            raise NotFusable(f"{type(base).__module__}.{type(base).__name__} is not a plain or NF4 linear layer")
        self.lora_at: Any = None  # (in, r): A transposed
        self.lora_bt: Any = None  # (r, out): (scaling * B) transposed
        if base is not module:
            self._take_lora(module, dtype)

    def _chunk(self, chunk_bytes: int, absmax: Any, qs: Any, dtype: Any) -> list[tuple[Any, Any]]:
        """Row chunks of about ``chunk_bytes`` of bf16 each, dequantized one at a time."""
        import bitsandbytes.functional as bnbf

        out_f, in_f = int(qs.shape[0]), int(qs.shape[1])
        if in_f % qs.blocksize:
            return []
        rows = max(1, chunk_bytes // (2 * in_f))
        if rows >= out_f:
            return []
        chunks = []
        for r0 in range(0, out_f, rows):
            r1 = min(out_f, r0 + rows)
            state = bnbf.QuantState(
                absmax=absmax[r0 * in_f // qs.blocksize : r1 * in_f // qs.blocksize], shape=(r1 - r0, in_f),
                code=qs.code, blocksize=qs.blocksize, quant_type=qs.quant_type, dtype=dtype,
            )
            chunks.append((self.packed[r0 * in_f // 2 : r1 * in_f // 2], state))
        return chunks

    def _take_lora(self, module: Any, dtype: Any) -> None:
        import torch

        if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
            return
        a_parts: list[Any] = []
        b_parts: list[Any] = []
        for name in getattr(module, "active_adapters", []):
            if name not in getattr(module, "lora_A", {}):
                continue
            if getattr(module, "use_dora", {}).get(name):
                raise NotFusable("DoRA adapters")
            variants = getattr(module, "lora_variant", None) or {}
            if variants.get(name) is not None:
                raise NotFusable(f"LoRA variant {type(variants[name]).__name__}")
            lin_a, lin_b = module.lora_A[name], module.lora_B[name]
            if not isinstance(lin_a, torch.nn.Linear) or not isinstance(lin_b, torch.nn.Linear):
                raise NotFusable("adapter layers are not linear")
            if lin_a.bias is not None or lin_b.bias is not None:
                raise NotFusable("adapters with biases")
            drop = module.lora_dropout[name] if hasattr(module, "lora_dropout") else None
            if drop is not None and drop.training and not isinstance(drop, torch.nn.Identity):
                raise NotFusable("adapter dropout in training mode")
            a_parts.append(lin_a.weight.detach().float())
            b_parts.append(lin_b.weight.detach().float() * float(module.scaling[name]))
        if a_parts:
            self.lora_at = torch.cat(a_parts, dim=0).t().contiguous().to(dtype)
            self.lora_bt = torch.cat(b_parts, dim=1).t().contiguous().to(dtype)

    def __call__(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if self.nf4:
            import bitsandbytes.functional as bnbf

            if self.chunks:
                # Each chunk is dequantized and used at once, then freed: the allocator
                # hands the next chunk the same block, so the bf16 weights can stay in
                # the GPU's L2 cache instead of going to and from HBM.
                parts = [F.linear(x, bnbf.dequantize_4bit(packed, state)) for packed, state in self.chunks]
                y = torch.cat(parts, dim=-1)
                if self.bias is not None:
                    y = y + self.bias
            else:
                y = F.linear(x, bnbf.dequantize_4bit(self.packed, self.quant_state), self.bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        if self.lora_at is not None:
            y = torch.addmm(y, torch.mm(x, self.lora_at), self.lora_bt)
        return y


PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def fuse_layers(layers: list[Any], dtype: Any, *, nf4_chunk_mb: float = 0.0) -> list[dict[str, FastLinear]]:
    """A :class:`FastLinear` for each projection of each layer (NotFusable if any cannot be).

    ``nf4_chunk_mb`` > 0: NF4 weights are dequantized in row chunks of about that many
    MB of bf16 (an experiment: on a GPU a chunk can stay in L2).
    """
    chunk = int(nf4_chunk_mb * 2**20)
    out = []
    for layer in layers:
        out.append({
            name: FastLinear(getattr(getattr(layer, part), name), dtype, chunk_bytes=chunk) for part, name in PROJECTIONS
        })
    return out


def check_layer(layer: Any, fused: dict[str, FastLinear], dtype: Any, device: Any, *, tol: float) -> float:
    """Largest relative difference between the fused projections and the modules on a random input."""
    import torch

    worst = 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for part, name in PROJECTIONS:
        module = getattr(getattr(layer, part), name)
        in_features = getattr(module, "in_features", None) or module.get_base_layer().in_features
        x = torch.randn(8, in_features, generator=gen).to(device=device, dtype=dtype)
        want = module(x[None])[0].float()
        got = fused[name](x).float()
        rel = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        worst = max(worst, rel)
        if not rel <= tol:
            raise NotFusable(f"{part}.{name}: fused output differs from the module's by {rel:.3g} (relative)")
    return worst
