"""Projections for the fast path: base weights and LoRA adapter in a few kernels.

A peft LoRA layer over a bitsandbytes NF4 layer costs about nine kernels per call
(dequantize the double-quantized scales, add their offset, dequantize the weight,
the product, a defensive clone, the two adapter products, the scaling, the sum),
and a decoder layer has seven of them. At a few dozen tokens a move those small
kernels, not the arithmetic, set the time. :class:`FastLinear` computes the same
function with fewer:

* projections that read the same input are one: q, k and v are one product, and
  so are gate and up. Their weights are put side by side in one tensor and the
  modules' own weights become views of it, so nothing is stored twice and the
  modules (the plain scorer, ``generate``) keep working on the same numbers;
* NF4: the block scales are dequantized once, at set-up (float32, one number per
  64 weights: +0.45 GB for a 7B model), so a call is one dequantize kernel and one
  product;
* LoRA: the adapter stays unmerged (merging into NF4 would re-quantize the base
  and change the model). The adapters of a group share one ``A`` product, their
  ``B`` matrices sit block-diagonally with the scaling folded in, and the sum is
  fused into the second product (``addmm``). The adapter runs in the compute
  dtype (bf16 on a GPU) where peft runs it in float32: the difference is within
  bf16 rounding (the benchmark reports the end-to-end difference).

So a decoder layer's projections are 4 x 4 kernels instead of 7 x 9. Anything else
(DoRA, adapters with biases, other quantizers) is declined with a reason, and the
fast path calls the modules themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class NotFusable(Exception):
    pass


GROUPS = (
    ("qkv", "self_attn", ("q_proj", "k_proj", "v_proj")),
    ("o", "self_attn", ("o_proj",)),
    ("gate_up", "mlp", ("gate_proj", "up_proj")),
    ("down", "mlp", ("down_proj",)),
)


def _base(module: Any) -> Any:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _is_nf4(layer: Any) -> bool:
    weight = getattr(layer, "weight", None)
    return type(layer).__name__ == "Linear4bit" and getattr(weight, "quant_state", None) is not None


def _joined(params: Sequence[Any]) -> Any:
    """One tensor holding ``params`` one after another along dim 0; the parameters
    become views of it (already adjacent parameters are used as they are)."""
    import torch

    first = params[0]
    rest_shape = tuple(first.shape[1:])
    rows = sum(int(p.shape[0]) for p in params)
    adjacent = all(p.is_contiguous() and tuple(p.shape[1:]) == rest_shape for p in params) and all(
        p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and p.storage_offset() == q.storage_offset() + q.numel()
        for q, p in zip(params, params[1:], strict=False)
    )
    def plain(p: Any) -> Any:  # a bitsandbytes Params4bit seen as the tensor it holds
        return p.detach().as_subclass(torch.Tensor)

    if len(params) == 1:
        return plain(first)
    if adjacent:
        stride = plain(first).contiguous().stride()
        return plain(first).as_strided((rows, *rest_shape), stride, first.storage_offset())
    joined = torch.cat([plain(p) for p in params], dim=0)
    offset = 0
    for p in params:
        n = int(p.shape[0])
        p.data = joined[offset : offset + n]
        offset += n
    return joined


class FastLinear:
    """``y = x W^T + b + (x A^T) (s B)^T`` for a 2-D ``x``; ``W`` the modules' weights side by side."""

    def __init__(self, modules: Sequence[Any], dtype: Any, *, chunk_bytes: int = 0) -> None:
        import torch

        bases = [_base(m) for m in modules]
        nf4 = [_is_nf4(b) for b in bases]
        if any(nf4) and not all(nf4):
            raise NotFusable("a mix of NF4 and other layers")
        self.nf4 = nf4[0]
        self.out_sizes = [int(b.out_features) for b in bases]
        in_sizes = {int(b.in_features) for b in bases}
        if len(in_sizes) != 1:
            raise NotFusable(f"grouped layers read different input sizes {sorted(in_sizes)}")
        self.in_features = in_sizes.pop()
        biases = [getattr(b, "bias", None) for b in bases]
        self.bias: Any = None
        if any(x is not None for x in biases):
            self.bias = torch.cat([
                x.detach().to(dtype) if x is not None else torch.zeros(n, dtype=dtype, device=bases[0].weight.device)
                for x, n in zip(biases, self.out_sizes, strict=True)
            ])
        self.weight: Any = None
        self.packed: Any = None
        self.quant_state: Any = None
        self.chunks: list[tuple[Any, Any]] = []
        # NF4: (rows, kernel tile config or None) by increasing rows, chosen by timing at
        # set-up (use_nf4_kernel); an input goes to the first entry with enough rows.
        self.kernel_plan: list[tuple[int, Any]] = []
        self.code: Any = None
        self.blocksize = 0
        if self.nf4:
            self._take_nf4(bases, dtype, chunk_bytes)
        else:
            for b in bases:
                if not (isinstance(b, torch.nn.Linear) and type(b).__name__ == "Linear"):
                    raise NotFusable(f"{type(b).__module__}.{type(b).__name__} is not a plain or NF4 linear layer")
            if all(b.weight.dtype == dtype for b in bases):
                self.weight = _joined([b.weight for b in bases])
            else:
                self.weight = torch.cat([b.weight.detach().to(dtype) for b in bases], dim=0)
        self.lora_at: Any = None  # (in, R): the adapters' A side by side, transposed
        self.lora_bt: Any = None  # (R, out): their scaled B block-diagonally, transposed
        self._take_lora(modules, bases, dtype)
        # the same, R padded with zeros to a power of two (>= 16), for the NF4 kernel's
        # epilogue: (in, Rp) and (out, Rp), made when the kernel is first planned
        self.lora_a_pad: Any = None
        self.lora_b_pad: Any = None

    def _take_nf4(self, bases: list[Any], dtype: Any, chunk_bytes: int) -> None:
        import bitsandbytes.functional as bnbf
        import torch

        states = [b.weight.quant_state for b in bases]
        for qs in states:
            if getattr(qs, "packing_format_for_cpu", False):
                raise NotFusable("bitsandbytes repacked these weights for its CPU kernels")
            if qs.quant_type != "nf4":
                raise NotFusable(f"4-bit quant type {qs.quant_type!r}")
            if int(qs.shape[1]) % qs.blocksize or qs.blocksize != states[0].blocksize:
                raise NotFusable("NF4 blocks that do not tile the rows")
        absmax = []
        for qs in states:
            a = bnbf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset if getattr(qs, "nested", False) else qs.absmax
            absmax.append(a.float())
        first = states[0]
        self.packed = _joined([b.weight for b in bases])
        self.absmax = torch.cat(absmax).contiguous()
        self.code = first.code.to(device=self.absmax.device, dtype=torch.float32).contiguous()
        out_f = sum(self.out_sizes)
        self.quant_state = bnbf.QuantState(
            absmax=self.absmax, shape=torch.Size((out_f, self.in_features)), code=first.code,
            blocksize=first.blocksize, quant_type="nf4", dtype=dtype,
        )
        self.blocksize = int(first.blocksize)
        if chunk_bytes > 0:
            self.chunks = self._chunk(chunk_bytes, dtype)

    def _chunk(self, chunk_bytes: int, dtype: Any) -> list[tuple[Any, Any]]:
        """Row chunks of about ``chunk_bytes`` of bf16 each, dequantized one at a time."""
        import bitsandbytes.functional as bnbf
        import torch

        qs = self.quant_state
        out_f, in_f = int(qs.shape[0]), int(qs.shape[1])
        rows = max(1, chunk_bytes // (2 * in_f))
        if rows >= out_f:
            return []
        chunks = []
        for r0 in range(0, out_f, rows):
            r1 = min(out_f, r0 + rows)
            state = bnbf.QuantState(
                absmax=self.absmax[r0 * in_f // qs.blocksize : r1 * in_f // qs.blocksize],
                shape=torch.Size((r1 - r0, in_f)), code=qs.code, blocksize=qs.blocksize, quant_type="nf4",
                dtype=dtype,
            )
            chunks.append((self.packed[r0 * in_f // 2 : r1 * in_f // 2], state))
        return chunks

    def _take_lora(self, modules: Sequence[Any], bases: list[Any], dtype: Any) -> None:
        import torch

        a_parts: list[Any] = []
        b_blocks: list[tuple[int, Any]] = []  # (row offset in the output, scaled B)
        row = 0
        for module, base, n_out in zip(modules, bases, self.out_sizes, strict=True):
            if module is not base and not getattr(module, "merged", False) and not getattr(
                module, "disable_adapters", False
            ):
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
                    b_blocks.append((row, lin_b.weight.detach().float() * float(module.scaling[name])))
            row += n_out
        if not a_parts:
            return
        a = torch.cat(a_parts, dim=0)
        b = torch.zeros((row, a.shape[0]), dtype=torch.float32, device=a.device)
        col = 0
        for r0, blk in b_blocks:
            b[r0 : r0 + blk.shape[0], col : col + blk.shape[1]] = blk
            col += blk.shape[1]
        self.lora_at = a.t().contiguous().to(dtype)
        self.lora_bt = b.t().contiguous().to(dtype)

    def _kernel_config(self, rows: int) -> Any:
        for limit, config in self.kernel_plan:
            if rows <= limit:
                return config
        return None

    def pad_lora(self) -> None:
        """The adapter with its rank padded for the kernel's epilogue (made once)."""
        import torch.nn.functional as F

        if self.lora_at is None or self.lora_a_pad is not None:
            return
        r = int(self.lora_at.shape[1])
        rp = max(16, 1 << (r - 1).bit_length())
        self.lora_a_pad = F.pad(self.lora_at, (0, rp - r)).contiguous()
        self.lora_b_pad = F.pad(self.lora_bt.t(), (0, rp - r)).contiguous()

    def kernel(self, x: Any, config: Any, *, with_lora: bool = False) -> Any:
        """The base product through engine.nf4gemm's fused kernel (no bias), and with
        ``with_lora`` the adapter's product added in the kernel."""
        import torch

        from engine.nf4gemm import nf4_linear

        lora = None
        if with_lora and self.lora_at is not None:
            self.pad_lora()
            lora = (torch.mm(x, self.lora_a_pad), self.lora_b_pad)
        return nf4_linear(x, self.packed, self.absmax, self.code, sum(self.out_sizes), blocksize=self.blocksize,
                          config=config, lora=lora)

    def dequant_product(self, x: Any, bias: Any = None) -> Any:
        """The NF4 base product as dequantize + product (no adapter)."""
        import bitsandbytes.functional as bnbf
        import torch.nn.functional as F

        return F.linear(x, bnbf.dequantize_4bit(self.packed, self.quant_state), bias)

    def __call__(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        config = self._kernel_config(int(x.shape[0])) if self.kernel_plan else None
        if config is not None:
            y = self.kernel(x, config, with_lora=True)  # the adapter inside the kernel
            return y + self.bias if self.bias is not None else y
        if self.nf4:
            import bitsandbytes.functional as bnbf

            if self.chunks:
                # Each chunk is dequantized and used at once, then freed: the allocator
                # hands the next chunk the same block, so the bf16 weights can stay in
                # the GPU's L2 cache instead of going to and from HBM.
                y = torch.cat([F.linear(x, bnbf.dequantize_4bit(p, st)) for p, st in self.chunks], dim=-1)
                if self.bias is not None:
                    y = y + self.bias
            else:
                y = self.dequant_product(x, self.bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        if self.lora_at is not None:
            y = torch.addmm(y, torch.mm(x, self.lora_at), self.lora_bt)
        return y


def fuse_layers(layers: list[Any], dtype: Any, *, nf4_chunk_mb: float = 0.0) -> list[dict[str, FastLinear]]:
    """The grouped projections of every layer (NotFusable if any cannot be built).

    ``nf4_chunk_mb`` > 0: NF4 weights are dequantized in row chunks of about that many
    MB of bf16 (an experiment: on a GPU a chunk can stay in L2).
    """
    chunk = int(nf4_chunk_mb * 2**20)
    out = []
    for layer in layers:
        out.append({
            group: FastLinear([getattr(getattr(layer, part), n) for n in names], dtype, chunk_bytes=chunk)
            for group, part, names in GROUPS
        })
    return out


def use_nf4_kernel(
    layers: list[dict[str, FastLinear]], rows: Sequence[int], *, device: Any, dtype: Any, tol: float,
    timed_layers: int = 8,
) -> str:
    """Route NF4 products through :mod:`engine.nf4gemm`'s fused kernel where it is faster.

    For each projection group and each row count in ``rows`` (the fast path's step
    buckets), every kernel tile choice is checked against dequantize + product on
    layer 0 (relative difference at most ``tol``) and timed, with dequantize +
    product, over ``timed_layers`` layers' weights (so from GPU memory, not L2) as a
    replayed CUDA graph; the fastest wins. Returns a note; any trouble leaves the
    kernel off.
    """
    import torch

    from engine.nf4gemm import BLOCK_K, available, configs_for, is_nf4_code

    groups = [g for g, f in layers[0].items() if f.nf4] if layers else []
    if not rows or not groups:
        return "off"
    why = available()
    if why is None and device.type != "cuda":
        why = "not on a CUDA device"
    if why is None and any(layers[0][g].in_features % BLOCK_K for g in groups):
        why = f"input sizes that are not multiples of {BLOCK_K}"
    if why is not None:
        return f"off ({why})"

    def timed(fn: Any) -> float:
        """ms per call of ``fn``, replayed as a CUDA graph as the fast path runs it (so
        the launch costs of a few small kernels do not count); eager if capture fails."""
        from engine.fastpath import capture_cuda_graph

        fn()
        torch.cuda.synchronize()
        graph = None
        run = fn
        try:
            graph, _ = capture_cuda_graph(fn)
            run = graph.replay
            run()
        except RuntimeError:
            torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            run()
        end.record()
        end.synchronize()
        del graph
        return float(start.elapsed_time(end)) / 3

    gen = torch.Generator(device="cpu").manual_seed(1)
    worst = 0.0
    used = 0
    plans: dict[str, list[tuple[int, Any]]] = {}
    try:
        for g in groups:
            fs = [layer[g] for layer in layers[:timed_layers]]
            f0 = fs[0]
            plan: list[tuple[int, Any]] = []
            for m in sorted(rows):
                x = torch.randn(m, f0.in_features, generator=gen).to(device=device, dtype=dtype)
                want = f0.dequant_product(x).float()
                scale = want.abs().max().clamp_min(1e-6)
                best_t = timed(lambda x=x, fs=fs: [f.dequant_product(x) for f in fs])
                best: Any = None
                for config in configs_for(m, f0.in_features, f0.blocksize, prmt=is_nf4_code(f0.code)):
                    rel = float((f0.kernel(x, config).float() - want).abs().max() / scale)
                    worst = max(worst, rel)
                    if not rel <= tol:
                        raise NotFusable(f"{g}: kernel {config} differs from dequantize + product by {rel:.3g}")
                    t = timed(lambda x=x, config=config, fs=fs: [f.kernel(x, config) for f in fs])
                    if t < best_t:
                        best_t, best = t, config
                plan.append((m, best))
                used += best is not None
            plans[g] = plan
    except Exception as exc:  # noqa: BLE001 - any kernel trouble: stay on the checked path
        from loguru import logger

        logger.warning("fast path: fused NF4 kernel off ({}: {})", type(exc).__name__, exc)
        return f"off ({type(exc).__name__}: {exc})"
    for layer in layers:
        for g, plan in plans.items():
            layer[g].kernel_plan = list(plan) if any(c is not None for _, c in plan) else []
            if layer[g].kernel_plan:
                layer[g].pad_lora()
    if not used:
        return f"off (dequantize + product was faster at every row count; max relative difference {worst:.2g})"
    chosen = {g: [m for m, c in plan if c is not None] for g, plan in plans.items()}
    return f"on for {chosen} rows (faster than dequantize + product there; max relative difference {worst:.2g})"


def check_layer(layer: Any, fused: dict[str, FastLinear], dtype: Any, device: Any, *, tol: float) -> float:
    """Largest relative difference between the grouped projections and the modules on a random input."""
    import torch

    worst = 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for group, part, names in GROUPS:
        f = fused[group]
        x = torch.randn(8, f.in_features, generator=gen).to(device=device, dtype=dtype)
        got = f(x).float().split(f.out_sizes, dim=-1)
        for name, g in zip(names, got, strict=True):
            want = getattr(getattr(layer, part), name)(x[None])[0].float()
            rel = float((g - want).abs().max() / want.abs().max().clamp_min(1e-6))
            worst = max(worst, rel)
            if not rel <= tol:
                raise NotFusable(f"{part}.{name}: fused output differs from the module's by {rel:.3g} (relative)")
    return worst
