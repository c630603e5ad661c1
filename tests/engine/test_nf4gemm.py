"""The fused NF4 dequantize-and-multiply kernel (engine/nf4gemm.py) against bitsandbytes (GPU:
pytest -m gpu). It must dequantize bit for bit as bitsandbytes does (one-hot inputs pick
weight columns out exactly) and multiply to bf16 rounding."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> object:
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize(("n", "k"), [(96, 128), (4096, 4096), (512, 14336)])
@pytest.mark.parametrize("m", [1, 16, 37, 130])
def test_kernel_matches_bitsandbytes(cuda: object, n: int, k: int, m: int) -> None:
    import bitsandbytes.functional as bnbf
    import torch
    import torch.nn.functional as F

    from engine import nf4gemm

    gen = torch.Generator(device="cpu").manual_seed(n + k + m)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device=cuda, dtype=torch.bfloat16)
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    deq = bnbf.dequantize_4bit(packed, qs)
    absmax, code = qs.absmax.float().contiguous(), qs.code.float().contiguous()
    # the kernel's unpacking, table and scaling are bitsandbytes' own
    ref = nf4gemm.dequantize_reference(packed, absmax, code, n, k, torch.bfloat16)
    assert torch.equal(ref, deq)
    rows = min(m, k)
    eye = torch.eye(k, device=cuda, dtype=torch.bfloat16)[:rows]
    assert torch.equal(nf4gemm.nf4_linear(eye, packed, absmax, code, n), deq[:, :rows].t())
    x = torch.randn(m, k, generator=gen).to(device=cuda, dtype=torch.bfloat16)
    want = F.linear(x, deq).float()
    got = nf4gemm.nf4_linear(x, packed, absmax, code, n).float()
    assert float((got - want).abs().max() / want.abs().max()) < 2e-2


@pytest.mark.parametrize("config", __import__("engine.nf4gemm", fromlist=["CONFIGS"]).CONFIGS)
def test_every_config_dequantizes_exactly(cuda: object, config: tuple[int, ...]) -> None:
    """Each set-up tile/variant (byte-permute lookup or select tree, interleaved or split
    inputs, K split) gives bitsandbytes' weights bit for bit and its product to rounding."""
    import bitsandbytes.functional as bnbf
    import torch
    import torch.nn.functional as F

    from engine import nf4gemm

    n, k = 384, 1024
    gen = torch.Generator(device="cpu").manual_seed(7)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device=cuda, dtype=torch.bfloat16)
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    deq = bnbf.dequantize_4bit(packed, qs)
    absmax, code = qs.absmax.float().contiguous(), qs.code.float().contiguous()
    assert nf4gemm.is_nf4_code(code)
    eye = torch.eye(k, device=cuda, dtype=torch.bfloat16)[:config[1]]
    got = nf4gemm.nf4_linear(eye, packed, absmax, code, n, config=config)
    assert torch.equal(got, deq[:, : config[1]].t())
    x = torch.randn(37, k, generator=gen).to(device=cuda, dtype=torch.bfloat16)
    want = F.linear(x, deq).float()
    got = nf4gemm.nf4_linear(x, packed, absmax, code, n, config=config).float()
    assert float((got - want).abs().max() / want.abs().max()) < 2e-2


def test_unavailable_reason_off_gpu() -> None:
    torch = pytest.importorskip("torch")
    from engine import nf4gemm

    if not torch.cuda.is_available():
        assert nf4gemm.available() is not None


@pytest.mark.parametrize("config", [c for c in __import__("engine.nf4gemm", fromlist=["CONFIGS"]).CONFIGS])
def test_lora_epilogue(cuda: object, config: tuple[int, ...]) -> None:
    """The adapter's second product added in the kernel (K-split programs add it once)."""
    import bitsandbytes.functional as bnbf
    import torch
    import torch.nn.functional as F

    from engine import nf4gemm

    n, k, m = 320, 1024, 45
    gen = torch.Generator(device="cpu").manual_seed(11)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device=cuda, dtype=torch.bfloat16)
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    deq = bnbf.dequantize_4bit(packed, qs)
    x = torch.randn(m, k, generator=gen).to(device=cuda, dtype=torch.bfloat16)
    xa = (torch.randn(m, 32, generator=gen) * 0.5).to(device=cuda, dtype=torch.bfloat16)
    lb = (torch.randn(n, 32, generator=gen) * 0.5).to(device=cuda, dtype=torch.bfloat16)
    want = F.linear(x, deq).float() + xa.float() @ lb.float().t()
    got = nf4gemm.nf4_linear(x, packed, qs.absmax.float(), qs.code.float(), n, config=config, lora=(xa, lb)).float()
    assert float((got - want).abs().max() / want.abs().max()) < 2e-2
