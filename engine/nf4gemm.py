"""A fused NF4 dequantize-and-multiply kernel (Triton) for the few-token products of a move.

bitsandbytes' path for a product with more than one input row dequantizes the whole
weight to bf16 (writing it to GPU memory), then multiplies (reading it back): about
3.5x the NF4 bytes a 4-bit weight takes, on every projection of every step. A move
is one forward over some 30 to 130 tokens, so the products are thin and that
traffic, not the arithmetic, sets their time. :func:`nf4_linear` reads each packed
byte once: a program takes a tile of output columns, unpacks two weights per byte
(bitsandbytes stores element ``2i`` in the high nibble, ``2i + 1`` in the low one),
looks each 4-bit code up in the 16-value NF4 table, multiplies by its 64-weight
block's scale (float32, dequantized once at set-up by :mod:`engine.fusedlinear`),
rounds to the input's dtype exactly as bitsandbytes' own dequantization does, and
multiplies the tile with ``tl.dot``. Even input columns meet the high nibbles and odd
ones the low nibbles, so the unpacked halves never need interleaving.

Triton is optional: :func:`available` says whether the kernel can run here (a CUDA
device and an importable Triton), and :class:`engine.fusedlinear.FastLinear` falls
back to dequantize + product otherwise, or when its set-up check finds the kernel's
output differs from the modules'. For many tokens (many games in one step) the
dequantize + product path is faster again: the kernel is used up to ``max_rows``
input rows.
"""

from __future__ import annotations

import functools
from typing import Any

BLOCK_K = 64  # one NF4 scale block per K step (bitsandbytes' default blocksize)


def available() -> str | None:
    """None when the kernel can run here, else why not."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "no torch"
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_matmul(
        x_ptr, w_ptr, absmax_ptr, code_ptr, y_ptr,
        M, N, K, stride_xm, stride_ym,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
        QBLOCK: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        HALF: tl.constexpr = BLOCK_K // 2
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_j = tl.arange(0, HALF)
        offs_k = tl.arange(0, BLOCK_K)
        m_mask = offs_m < M
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_len = K // SPLIT_K
        k_begin = pid_k * k_len
        w_row = offs_n.to(tl.int64) * (K // 2)
        s_row = offs_n.to(tl.int64) * (K // QBLOCK)
        x_rows = x_ptr + offs_m[:, None] * stride_xm
        for k0 in range(k_begin, k_begin + k_len, BLOCK_K):
            packed = tl.load(w_ptr + w_row[:, None] + (k0 // 2 + offs_j)[None, :], mask=n_mask[:, None], other=0)
            scale = tl.load(absmax_ptr + s_row[:, None] + ((k0 + 2 * offs_j) // QBLOCK)[None, :],
                            mask=n_mask[:, None], other=0.0)
            w_hi = (tl.load(code_ptr + (packed >> 4).to(tl.int32)) * scale).to(x_ptr.dtype.element_ty)
            w_lo = (tl.load(code_ptr + (packed & 15).to(tl.int32)) * scale).to(x_ptr.dtype.element_ty)
            x = tl.load(x_rows + (k0 + offs_k)[None, :], mask=m_mask[:, None], other=0.0)
            x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, HALF, 2)))
            acc += tl.dot(x_even, tl.trans(w_hi))
            acc += tl.dot(x_odd, tl.trans(w_lo))
        y_offs = offs_m[:, None] * stride_ym + offs_n[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(y_ptr + y_offs, acc, mask=mask)

    return nf4_matmul


# (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps) tried at set-up; few K steps per
# program and many programs, so that the loads' latency is hidden by other programs.
CONFIGS = (
    (16, 32, 256, 4, 4), (16, 32, 128, 8, 4), (16, 64, 256, 2, 4), (16, 16, 256, 8, 2),
    (32, 32, 256, 4, 4), (32, 64, 128, 4, 4), (64, 64, 128, 2, 4), (64, 32, 256, 4, 4),
)


def configs_for(m: int, k: int) -> list[tuple[int, int, int, int, int]]:
    """The set-up candidates that fit an (m x k) input: row tiles no taller than needed,
    K splits that tile ``k``."""
    cap = max(16, 1 << (max(m, 1) - 1).bit_length())
    return [c for c in CONFIGS if c[0] <= cap and k % (c[2] * c[3]) == 0]


def nf4_linear(
    x: Any, packed: Any, absmax: Any, code: Any, n: int, *, blocksize: int = 64,
    config: tuple[int, int, int, int, int] | None = None,
) -> Any:
    """``x @ dequant(W)^T`` for a 2-D ``x`` (m, k); ``W`` (n, k) NF4-packed, two codes a byte,
    ``absmax`` one float32 scale per ``blocksize`` weights, ``code`` the 16 NF4 values."""
    import torch
    import triton

    m, k = x.shape
    if k % BLOCK_K:
        raise ValueError(f"input size {k} is not a multiple of {BLOCK_K}")
    if blocksize % 2:
        raise ValueError(f"NF4 blocksize {blocksize} is odd")
    if x.stride(1) != 1:
        x = x.contiguous()
    if config is None:
        fits = configs_for(m, k)
        config = fits[0] if fits else (16, 32, BLOCK_K, 1, 4)
    block_m, block_n, block_k, split, warps = config
    if split == 1:
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), split)
    _kernel()[grid](
        x, packed, absmax, code, y, m, n, k, x.stride(0), y.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, QBLOCK=blocksize,
        num_warps=warps, num_stages=2,
    )
    return y if split == 1 else y.to(x.dtype)


@functools.cache
def _sm_count(device: Any) -> int:
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return 132
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def dequantize_reference(packed: Any, absmax: Any, code: Any, n: int, k: int, dtype: Any, blocksize: int = 64) -> Any:
    """The (n, k) weight the packed bytes hold, in plain torch (what bitsandbytes' dequantize
    computes: high nibble first, float32 code times scale, rounded to ``dtype``)."""
    import torch

    flat = packed.reshape(-1).to(torch.int64)
    codes = torch.stack((flat >> 4, flat & 15), dim=1).reshape(-1)
    vals = code.float()[codes] * absmax.float().repeat_interleave(blocksize)[: codes.numel()]
    return vals.to(dtype).reshape(n, k)
