"""The fast path on an NF4 (bitsandbytes) model with a LoRA adapter, on the CPU.

bitsandbytes quantizes and dequantizes NF4 on the CPU too, so the fused NF4 + LoRA
projections (whole and dequantized in row chunks) are checked here against the plain scorer; skipped where bitsandbytes
is not installed (it is a GPU extra). Tolerance: both paths compute in bf16, so
log-probabilities agree to 0.1 nats per candidate and the best move is the same
unless the plain scorer itself puts the two within that tolerance.
"""

from __future__ import annotations

import random
from pathlib import Path

import chess
import pytest

from engine.config import EngineConfig
from engine.player import Player
from engine.scoring import LMScorer

BF16_TOL = 0.1


@pytest.fixture
def nf4_lora_model(tiny_model_dir: Path) -> object:
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), quantization_config=q,
                                                     device_map={"": "cpu"}, dtype=torch.bfloat16)
    except Exception as exc:  # an install whose bitsandbytes has no CPU backend
        pytest.skip(f"NF4 on the CPU is not available here: {exc}")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, lora).eval()


@pytest.mark.parametrize(("fuse", "chunk_mb"), [(True, 0.0), (True, 0.002), (False, 0.0)])
def test_nf4_lora_fast_path_matches_plain(
    nf4_lora_model: object, tiny_model_dir: Path, fuse: bool, chunk_mb: float
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    s = LMScorer(nf4_lora_model, tok, "cpu", fuse_linears=fuse, nf4_chunk_mb=chunk_mb)
    assert s.fast
    assert s.fast_path.fuse_note.startswith("on" if fuse else "off"), s.fast_path.fuse_note
    assert ("chunks" in s.fast_path.fuse_note) == (chunk_mb > 0)
    player = Player(EngineConfig(), s)
    rng = random.Random(2)
    board = chess.Board()
    for _ in range(12):
        prompt = player.prompt_for(board, engine_color=chess.WHITE)
        conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
        fast = s.score(prompt, conts).logprobs
        plain = s.score_plain(prompt, conts).logprobs
        assert max(abs(a - b) for a, b in zip(fast, plain, strict=True)) <= BF16_TOL
        best = max(range(len(fast)), key=fast.__getitem__)
        assert plain[best] >= max(plain) - BF16_TOL
        board.push(rng.choice(list(board.legal_moves)))
