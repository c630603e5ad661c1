"""The fused NF4 kernel's logic on the CPU (engine/nf4gemm.py; its GPU runs are in
test_nf4gemm.py).

* The byte-permute lookup is PTX the GPU runs as written: here a small interpreter of
  the instructions it uses (``and``, ``or``, ``shr``, ``prmt``, ``lop3``, as the PTX
  manual defines them) runs the generated text on every byte value and must give
  bitsandbytes' NF4 table values, bit for bit, for both nibbles.
* The kernel's Triton code (the select-tree variants: tiles, K split, interleaved or
  split inputs, masks) runs under Triton's interpreter and must reproduce the NF4
  weights exactly (one-hot inputs) and their product.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import nf4gemm

ROOT = Path(__file__).resolve().parents[2]


def _prmt(a: int, b: int, c: int) -> int:
    src = [(a >> (8 * i)) & 255 for i in range(4)] + [(b >> (8 * i)) & 255 for i in range(4)]
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 15
        byte = src[sel & 7]
        if sel & 8:  # sign-replicate mode
            byte = 255 if byte & 128 else 0
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def run_ptx(asm: str, operands: dict[str, int]) -> dict[str, int]:
    """Run the lookup's PTX (the subset it uses) with ``$n`` operands given; returns them all."""
    regs = dict(operands)

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return int(tok, 0) & 0xFFFFFFFF

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [t.strip() for t in rest.split(",")]
        d, src = args[0], [val(t) for t in args[1:]]
        if op == "and.b32":
            r = src[0] & src[1]
        elif op == "or.b32":
            r = src[0] | src[1]
        elif op == "shr.u32":
            r = src[0] >> src[1]
        elif op == "prmt.b32":
            r = _prmt(*src)
        elif op == "lop3.b32":
            r = _lop3(*src)
        else:
            raise AssertionError(f"instruction {op} is not in the interpreted subset")
        regs[d] = r & 0xFFFFFFFF
    return regs


def _bits(f: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", f))[0])


@pytest.mark.parametrize("odd", [False, True])
def test_prmt_lookup_gives_the_nf4_table_bit_for_bit(odd: bool) -> None:
    asm = nf4gemm.prmt_lookup_asm(odd)
    refs = set(re.findall(r"\$\d+", asm))
    words = nf4gemm.register_words()
    operands = {f"${5 + 4 * j}": w & 0xFFFFFFFF for j, w in enumerate(words)}
    assert refs - {"$0", "$1", "$2", "$3", "$4"} == set(operands)
    for first in range(256):
        packed = [first, (first * 7 + 3) % 256, (first * 13 + 5) % 256, 255 - first]
        word = sum(b << (8 * i) for i, b in enumerate(packed))
        regs = run_ptx(asm, {**operands, "$4": word})
        for i, byte in enumerate(packed):
            code = byte & 15 if odd else byte >> 4
            assert regs[f"${i}"] == _bits(nf4gemm.NF4_CODE[code]), (first, i)


def test_nf4_table_check() -> None:
    torch = pytest.importorskip("torch")
    code = torch.tensor(nf4gemm.NF4_CODE)
    assert nf4gemm.is_nf4_code(code)
    assert not nf4gemm.is_nf4_code(code.flip(0))
    assert not nf4gemm.is_nf4_code(code[:8])
    assert all(c[5] & nf4gemm.PRMT_LUT == 0 for c in nf4gemm.configs_for(64, 4096, prmt=False))
    assert any(c[5] & nf4gemm.PRMT_LUT for c in nf4gemm.configs_for(64, 4096))


INTERPRETED = textwrap.dedent("""
    import torch
    from engine import nf4gemm
    code = torch.tensor(nf4gemm.NF4_CODE)
    gen = torch.Generator().manual_seed(0)
    configs = [(64, 16, 1, 4, 3, 0), (32, 16, 2, 4, 3, 0), (32, 32, 2, 4, 3, nf4gemm.INTERLEAVE),
               (64, 16, 4, 4, 3, nf4gemm.INTERLEAVE)]
    for n, k, m in ((96, 256, 5), (80, 512, 37)):
        packed = torch.randint(0, 256, (n * k // 2, 1), dtype=torch.uint8, generator=gen)
        absmax = torch.rand(n * k // 64, generator=gen) * 0.1
        ref = nf4gemm.dequantize_reference(packed, absmax, code, n, k, torch.float16)
        for cfg in configs:
            eye = torch.eye(k, dtype=torch.float16)[: cfg[1]]
            got = nf4gemm.nf4_linear(eye, packed, absmax, code, n, config=cfg)
            assert torch.equal(got, ref[:, : cfg[1]].t()), (n, k, cfg)
            x = torch.randn(m, k, generator=gen).to(torch.float16)
            want = x.float() @ ref.float().t()
            y = nf4gemm.nf4_linear(x, packed, absmax, code, n, config=cfg).float()
            rel = float((y - want).abs().max() / want.abs().max())
            assert rel < 2e-3, (n, k, cfg, rel)
            # a LoRA adapter's product in the kernel's epilogue (rank padded to 16)
            xa = (torch.randn(m, 16, generator=gen) * 0.1).to(torch.float16)
            lb = (torch.randn(n, 16, generator=gen) * 0.1).to(torch.float16)
            want = want + xa.float() @ lb.float().t()
            y = nf4gemm.nf4_linear(x, packed, absmax, code, n, config=cfg, lora=(xa, lb)).float()
            rel = float((y - want).abs().max() / want.abs().max())
            assert rel < 2e-3, (n, k, cfg, "lora", rel)
    print("interpreted ok")
""")


def test_select_variants_under_triton_interpreter() -> None:
    """float16 in, as Triton's CPU interpreter does not handle bfloat16 products."""
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interpreted ok" in proc.stdout
