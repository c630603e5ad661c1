"""A fused NF4 dequantize-and-multiply kernel (Triton) for the few-token products of a move.

bitsandbytes' path for a product with more than one input row dequantizes the whole
weight to bf16 (writing it to GPU memory), then multiplies (reading it back), on every
projection of every step. :func:`nf4_linear` never writes the bf16 weights: it computes
``y^T = W x^T`` with the weight tile as the product's left operand (as stored: rows of
W, K contiguous) and the few input rows as the right one. Each step takes one NF4 block
(64 weights, 32 bytes, one float32 scale) of every row of the tile. A byte's high
nibble is weight ``2i`` and its low nibble ``2i + 1`` (bitsandbytes' packing). The
codes become table values through byte permutes (:func:`prmt_lookup_asm`, inline PTX,
bitsandbytes' NF4 table only) or a tree of selects (any table). The value times the
block scale is rounded to the input's dtype exactly as bitsandbytes' dequantization
rounds it, so the kernel's weights are bitsandbytes' bit for bit. Optionally a LoRA
adapter's second product is added in the epilogue.

Triton is optional: :func:`available` says whether the kernel can run here (a CUDA
device and an importable Triton), and :class:`engine.fusedlinear.FastLinear` falls back
to dequantize + product otherwise, or where its set-up timing finds the kernel slower
(many tokens: many games in one step), or when its set-up check finds the kernel's
output differs from the modules'.
"""

from __future__ import annotations

import functools
from typing import Any

BLOCK_K = 64  # input sizes must be multiples of this (bitsandbytes' default NF4 blocksize)


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


# bitsandbytes' NF4 table (functional.get_4bit_type("nf4")), float32. The byte-permute
# lookup below has these values built into its instructions; FastLinear checks a
# model's table against it before choosing that variant.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)


@functools.cache
def _words(device: Any) -> Any:
    import torch

    return torch.tensor(register_words(), dtype=torch.int32, device=device)


@functools.cache
def _asm(odd: bool) -> str:
    return prmt_lookup_asm(odd)


def is_nf4_code(code: Any) -> bool:
    """Whether a 16-value table (a tensor) is bitsandbytes' NF4 table, bit for bit (the
    byte-permute variant's precondition)."""
    import torch

    want = torch.tensor(NF4_CODE, dtype=torch.float32)
    return tuple(code.shape) == (16,) and bool(torch.equal(code.detach().float().cpu(), want))


def plane_words(code: tuple[float, ...] = NF4_CODE) -> list[list[int]]:
    """``[b][j]``: byte ``b`` of the float32 table entries ``4j .. 4j + 3``, as one word."""
    import struct

    bits = [int(struct.unpack("<I", struct.pack("<f", v))[0]) for v in code]
    return [[sum(((bits[4 * j + i] >> (8 * b)) & 255) << (8 * i) for i in range(4)) for j in range(4)]
            for b in range(4)]


def register_words(code: tuple[float, ...] = NF4_CODE) -> list[int]:
    """The eight table words the lookup takes in registers (``prmt``'s first source
    cannot be an immediate), in operand order, as signed 32-bit values."""
    words = [w for plane in plane_words(code) for w in (plane[0], plane[2])]
    return [w - (1 << 32) if w >= 1 << 31 else w for w in words]


def prmt_lookup_asm(odd: bool, code: tuple[float, ...] = NF4_CODE) -> str:
    """PTX for the byte-permute lookup: 4 packed bytes in, the float32 table values of
    their 4 high (``odd=False``: the even weights) or low (``odd=True``) nibbles out.

    ``prmt`` picks 4 bytes out of 8 by 3-bit selectors, so each byte plane of the
    16 float32 values (4 planes x 16 bytes) is two lookups (entries 0-7, 8-15) merged
    by a mask made from the selectors' top bit (``prmt``'s sign-replicate mode turns
    it into 0x00/0xFF bytes); four ``prmt`` then put the planes' bytes back together
    as four floats: about 7 instructions a weight. Compiled for sm_90, the kernel's whole
    loop takes about 12 instructions a weight this way and 20 with the tree of selects.
    """
    table = plane_words(code)
    # Operands: $0-$3 the four floats out, $4 the four packed bytes, then the eight
    # table words that take a register in prmt ($5, $9, ...: four copies each, one per
    # packed element); the other eight are immediates.
    lines = ["{", ".reg .b32 x, y, sel, s3, ms, mk, a, b, p0, p1, p2, p3, q0, q1, q2, q3;"]
    lines.append("and.b32 x, $4, 0x0F0F0F0F;" if odd else "shr.u32 x, $4, 4;\nand.b32 x, x, 0x0F0F0F0F;")
    lines += [
        "shr.u32 y, x, 4;", "or.b32 y, x, y;",
        "prmt.b32 sel, y, 0, 0x4420;",  # nibble i of sel = byte i's code
        "and.b32 s3, sel, 0x7777;",
        "shr.u32 ms, sel, 1;", "and.b32 ms, ms, 0x4444;", "or.b32 ms, ms, 0x8888;",
        "prmt.b32 mk, 0, 0x80808080, ms;",  # byte i: 0xFF where code i >= 8
    ]
    for b in range(4):
        t = table[b]
        lines += [f"prmt.b32 a, ${5 + 8 * b}, {t[1]:#010x}, s3;", f"prmt.b32 b, ${9 + 8 * b}, {t[3]:#010x}, s3;",
                  f"lop3.b32 p{b}, a, b, mk, 0xD8;"]
    lines += [
        "prmt.b32 q0, p0, p1, 0x5140;", "prmt.b32 q1, p0, p1, 0x7362;",
        "prmt.b32 q2, p2, p3, 0x5140;", "prmt.b32 q3, p2, p3, 0x7362;",
        "prmt.b32 $0, q0, q2, 0x5410;", "prmt.b32 $1, q0, q2, 0x7632;",
        "prmt.b32 $2, q1, q3, 0x5410;", "prmt.b32 $3, q1, q3, 0x7632;",
        "}",
    ]
    return "\n".join(lines)


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    # the lookup's operands: four floats out, the packed bytes, the eight register words
    ASM_CONSTRAINTS: tl.constexpr = tl.constexpr("=r,=r,=r,=r,r" + ",r,r,r,r" * 8)

    @triton.jit
    def nf4_matmul_t(
        x_ptr, w_ptr, absmax_ptr, code_ptr, words_ptr, y_ptr, xa_ptr, lb_ptr,
        M, N, K, stride_w, stride_xm, stride_ym,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT_K: tl.constexpr, QBLOCK: tl.constexpr,
        PRMT_LUT: tl.constexpr, INTERLEAVE: tl.constexpr, ASM_EVEN: tl.constexpr, ASM_ODD: tl.constexpr,
        LORA_R: tl.constexpr,
    ):
        # y^T = W x^T: the weight tile is the product's left operand, as stored (rows of
        # W along N, K contiguous), and the few input rows are the right one.
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        HALF: tl.constexpr = QBLOCK // 2
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_h = tl.arange(0, HALF)
        n_mask = offs_n < N
        m_mask = offs_m < M
        k_len = K // SPLIT_K
        # (alignment hints, so that the loads are vectorized: k_len is whole NF4 blocks)
        k_begin = tl.multiple_of(pid_k * k_len, QBLOCK)
        rows = offs_n.to(tl.int64)
        # one NF4 block (QBLOCK weights, QBLOCK / 2 bytes, one scale) of each row a step;
        # a byte's high nibble is the even weight, its low nibble the odd one
        w_ptrs = w_ptr + rows[:, None] * stride_w + (tl.multiple_of(k_begin // 2, HALF) + offs_h)[None, :]
        s_ptrs = absmax_ptr + rows * (K // QBLOCK) + k_begin // QBLOCK
        if INTERLEAVE:
            x_ptrs = x_ptr + offs_m[None, :] * stride_xm + (k_begin + tl.arange(0, QBLOCK))[:, None]
        else:
            x_ptrs = x_ptr + offs_m[None, :] * stride_xm + (k_begin + 2 * offs_h)[:, None]
        if PRMT_LUT:
            zero = tl.zeros((BLOCK_N, HALF), dtype=tl.int32)
            r0 = zero + tl.load(words_ptr + 0)
            r1 = zero + tl.load(words_ptr + 1)
            r2 = zero + tl.load(words_ptr + 2)
            r3 = zero + tl.load(words_ptr + 3)
            r4 = zero + tl.load(words_ptr + 4)
            r5 = zero + tl.load(words_ptr + 5)
            r6 = zero + tl.load(words_ptr + 6)
            r7 = zero + tl.load(words_ptr + 7)
        else:
            c0 = tl.load(code_ptr + 0)
            c1 = tl.load(code_ptr + 1)
            c2 = tl.load(code_ptr + 2)
            c3 = tl.load(code_ptr + 3)
            c4 = tl.load(code_ptr + 4)
            c5 = tl.load(code_ptr + 5)
            c6 = tl.load(code_ptr + 6)
            c7 = tl.load(code_ptr + 7)
            c8 = tl.load(code_ptr + 8)
            c9 = tl.load(code_ptr + 9)
            c10 = tl.load(code_ptr + 10)
            c11 = tl.load(code_ptr + 11)
            c12 = tl.load(code_ptr + 12)
            c13 = tl.load(code_ptr + 13)
            c14 = tl.load(code_ptr + 14)
            c15 = tl.load(code_ptr + 15)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for _ in range(0, k_len, QBLOCK):
            packed = tl.load(w_ptrs, mask=n_mask[:, None], other=0)
            scale = tl.load(s_ptrs, mask=n_mask, other=0.0)[:, None]
            if PRMT_LUT:
                operands = [packed, r0, r1, r2, r3, r4, r5, r6, r7]
                v_even = tl.inline_asm_elementwise(ASM_EVEN, ASM_CONSTRAINTS, operands, dtype=tl.float32,
                                                   is_pure=True, pack=4)
                v_odd = tl.inline_asm_elementwise(ASM_ODD, ASM_CONSTRAINTS, operands, dtype=tl.float32,
                                                  is_pure=True, pack=4)
            else:
                # a tree of selects over the table (exact for any 16-value table), on both
                # nibbles of each byte at once
                nib = tl.join(packed >> 4, packed & 15)
                b0 = (nib & 1) != 0
                b1 = (nib & 2) != 0
                b2 = (nib & 4) != 0
                b3 = (nib & 8) != 0
                v_even, v_odd = tl.split(tl.where(
                    b3,
                    tl.where(b2, tl.where(b1, tl.where(b0, c15, c14), tl.where(b0, c13, c12)),
                             tl.where(b1, tl.where(b0, c11, c10), tl.where(b0, c9, c8))),
                    tl.where(b2, tl.where(b1, tl.where(b0, c7, c6), tl.where(b0, c5, c4)),
                             tl.where(b1, tl.where(b0, c3, c2), tl.where(b0, c1, c0)))))
            # bitsandbytes' rounding: float32 value times float32 scale, then to the input dtype
            w_even = (v_even * scale).to(x_ptr.dtype.element_ty)
            w_odd = (v_odd * scale).to(x_ptr.dtype.element_ty)
            if INTERLEAVE:
                x = tl.load(x_ptrs, mask=m_mask[None, :], other=0.0)
                acc += tl.dot(tl.interleave(w_even, w_odd), x)
            else:
                # even weights meet even input columns, odd weights odd ones
                x_even = tl.load(x_ptrs, mask=m_mask[None, :], other=0.0)
                x_odd = tl.load(x_ptrs + 1, mask=m_mask[None, :], other=0.0)
                acc += tl.dot(w_even, x_even)
                acc += tl.dot(w_odd, x_odd)
            w_ptrs += HALF
            s_ptrs += 1
            x_ptrs += QBLOCK
        if LORA_R > 0:  # noqa: SIM102 - a constexpr test around a runtime one, kept apart for Triton
            # a LoRA adapter's second product, (x A^T) B^T, added by the first K part
            if pid_k == 0:
                offs_r = tl.arange(0, LORA_R)
                lb = tl.load(lb_ptr + rows[:, None] * LORA_R + offs_r[None, :], mask=n_mask[:, None], other=0.0)
                xa = tl.load(xa_ptr + offs_m[None, :] * LORA_R + offs_r[:, None], mask=m_mask[None, :], other=0.0)
                acc += tl.dot(lb, xa)
        y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
        mask = n_mask[:, None] & m_mask[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(y_ptrs, acc, mask=mask)

    return nf4_matmul_t


# Variant bits of a config: how a 4-bit code becomes its value, and how the even and odd
# weights of a byte meet the input.
PRMT_LUT = 1  # the byte-permute lookup (prmt_lookup_asm: bitsandbytes' NF4 table only), else a
#               tree of selects over the table passed in
INTERLEAVE = 2  # even and odd weights interleaved into one product, else two products with the
#                 even and odd input columns

# (BLOCK_N, BLOCK_M, SPLIT_K, num_warps, num_stages, variant) tried at set-up. Splits of K
# give the narrow projections (o, down: 4,096 outputs) enough programs for the GPU; the
# H200 sweep (benchmarks/results/nf4_gemm_h200_v4_explore.json) found the byte-permute variants
# fastest, split inputs up to 32 rows and interleaved ones above.
CONFIGS = (
    (128, 16, 2, 4, 3, PRMT_LUT), (64, 16, 4, 4, 3, PRMT_LUT), (64, 16, 8, 4, 3, PRMT_LUT),
    (128, 32, 2, 4, 3, PRMT_LUT), (64, 32, 4, 4, 3, PRMT_LUT), (64, 32, 8, 4, 3, PRMT_LUT),
    (128, 32, 2, 4, 3, PRMT_LUT | INTERLEAVE),
    (128, 64, 1, 8, 3, PRMT_LUT | INTERLEAVE), (64, 64, 4, 4, 3, PRMT_LUT | INTERLEAVE),
    (128, 64, 4, 8, 3, PRMT_LUT | INTERLEAVE), (64, 64, 8, 4, 3, PRMT_LUT | INTERLEAVE),
    (128, 64, 2, 4, 3, PRMT_LUT),
    (128, 128, 1, 8, 3, PRMT_LUT), (64, 128, 4, 8, 3, PRMT_LUT | INTERLEAVE),
    # the select tree, for tables other than bitsandbytes' NF4
    (128, 32, 2, 4, 3, INTERLEAVE), (64, 64, 4, 8, 3, INTERLEAVE), (128, 64, 1, 4, 3, INTERLEAVE),
)


def configs_for(m: int, k: int, blocksize: int = 64, *, prmt: bool = True) -> list[tuple[int, ...]]:
    """The set-up candidates that fit an (m x k) input: row tiles no taller than needed
    and no shorter than half of that (the input rows are the product's narrow side), K
    splits whole in NF4 blocks; the
    byte-permute variants only with ``prmt`` (the table is bitsandbytes' NF4 table)."""
    cap = max(16, 1 << (max(m, 1) - 1).bit_length())
    tallest = max(c[1] for c in CONFIGS if c[1] <= cap)
    # a row tile of half the rows or less dequantizes each weight twice or more: skipped
    return [c for c in CONFIGS
            if tallest >= c[1] >= min(cap, tallest * 2) // 2 and k % (blocksize * c[2]) == 0
            and (prmt or not c[5] & PRMT_LUT)]


def nf4_linear(
    x: Any, packed: Any, absmax: Any, code: Any, n: int, *, blocksize: int = 64,
    config: tuple[int, ...] | None = None, lora: tuple[Any, Any] | None = None,
) -> Any:
    """``x @ dequant(W)^T`` for a 2-D ``x`` (m, k); ``W`` (n, k) NF4-packed, two codes a byte,
    ``absmax`` one float32 scale per ``blocksize`` weights, ``code`` the 16 NF4 values.

    ``lora=(xa, b)``: plus ``xa @ b^T`` in the same kernel, with ``xa = x @ A^T`` (m, r)
    and ``b`` (n, r) the scaled adapter matrix, both contiguous, ``r`` a power of two of at
    least 16 (pad with zeros)."""
    import torch
    import triton

    m, k = x.shape
    if blocksize % 2 or blocksize < 16 or blocksize & (blocksize - 1):
        raise ValueError(f"NF4 blocksize {blocksize} is not an even power of two of at least 16")
    if k % blocksize:
        raise ValueError(f"input size {k} is not a multiple of the NF4 blocksize {blocksize}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if config is None:
        fits = configs_for(m, k, blocksize, prmt=is_nf4_code(code))
        config = fits[0] if fits else (64, 16, 1, 4, 3, INTERLEAVE)
    block_n, block_m, split, warps, stages, variant = config
    if k % (blocksize * split):
        raise ValueError(f"input size {k} does not split into {split} parts of whole NF4 blocks")
    if split == 1:
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    r = 0
    if lora is not None:
        xa, lb = lora
        r = int(lb.shape[1])
        if r < 16 or r & (r - 1) or tuple(xa.shape) != (m, r) or tuple(lb.shape) != (n, r):
            raise ValueError(f"LoRA operands {tuple(xa.shape)} and {tuple(lb.shape)} do not fit ({m}, r) and "
                             f"({n}, r) with r a power of two >= 16")
        if not (xa.is_contiguous() and lb.is_contiguous()):
            raise ValueError("LoRA operands must be contiguous")
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), split)
    _kernel()[grid](
        x, packed, absmax, code, _words(x.device) if variant & PRMT_LUT else code, y,
        lora[0] if lora is not None else x, lora[1] if lora is not None else x, m, n, k, k // 2,
        x.stride(0), y.stride(0),
        BLOCK_N=block_n, BLOCK_M=block_m, SPLIT_K=split, QBLOCK=blocksize,
        PRMT_LUT=bool(variant & PRMT_LUT), INTERLEAVE=bool(variant & INTERLEAVE),
        ASM_EVEN=_asm(False) if variant & PRMT_LUT else "", ASM_ODD=_asm(True) if variant & PRMT_LUT else "",
        LORA_R=r,
        num_warps=warps, num_stages=stages,
    )
    return y if split == 1 else y.to(x.dtype)


def dequantize_reference(packed: Any, absmax: Any, code: Any, n: int, k: int, dtype: Any, blocksize: int = 64) -> Any:
    """The (n, k) weight the packed bytes hold, in plain torch (what bitsandbytes' dequantize
    computes: high nibble first, float32 code times scale, rounded to ``dtype``)."""
    import torch

    flat = packed.reshape(-1).to(torch.int64)
    codes = torch.stack((flat >> 4, flat & 15), dim=1).reshape(-1)
    vals = code.float()[codes] * absmax.float().repeat_interleave(blocksize)[: codes.numel()]
    return vals.to(dtype).reshape(n, k)
