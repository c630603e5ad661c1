"""Per-move latency of the engine on a Mistral-7B-shaped model, NF4 + LoRA (GPU machine).

The engine's own load path (engine.model.load_model: 4-bit NF4, double quant, bf16
compute, peft adapter) serves a model with ``MistralConfig()`` shapes and random
weights, with the real Mistral tokenizer. One game is played to 150 plies (the
engine picks every move, so the prompt grows as in a real game); moves at plies
10, 60 and 150 are timed (median of ``--reps`` repeats, after one warm-up) in both
move-choice modes, and beside them the plain recipe (``model.generate`` of 6 tokens
on the same prompt) as shared/PERFORMANCE.md measured it.

    python benchmarks/engine_latency.py --tokenizer DIR --work /tmp/bench --out results.json

``--tiny`` runs the same code on a 2-layer model (CPU or GPU) to check the script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import chess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_models(work: Path, tokenizer: Path, *, tiny: bool) -> tuple[Path, Path]:
    """Random-weight base (safetensors) and a random LoRA adapter (r=16, all linears)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    base, adapter = work / "base", work / "adapter"
    if (base / "config.json").is_file() and (adapter / "adapter_config.json").is_file():
        return base, adapter
    cfg = MistralConfig() if not tiny else MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(base), safe_serialization=True, max_shard_size="5GB")
    AutoTokenizer.from_pretrained(str(tokenizer)).save_pretrained(str(base))
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False, task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(adapter))
    del model, peft_model
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"made random base + adapter in {time.time() - t0:.0f}s", flush=True)
    return base, adapter


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--work", default=Path("/tmp/engine-bench"), type=Path)
    ap.add_argument("--out", default=Path("engine_latency.json"), type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()

    import torch
    import transformers
    from loguru import logger

    from engine.config import EngineConfig, ModelConfig
    from engine.model import load_model
    from engine.player import Player
    from engine.scoring import LMScorer

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    base, adapter = make_models(args.work, args.tokenizer, tiny=args.tiny)
    cuda = torch.cuda.is_available()
    quant = "nf4" if cuda else "none"
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # count the engine's load, not the model's creation
    t0 = time.time()
    loaded = load_model(ModelConfig(path=str(base), adapter=str(adapter), quantization=quant))
    load_s = time.time() - t0
    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device)
    scorer.window_plies = loaded.window_plies  # the prompts the engine writes for this model
    res: dict[str, object] = {
        "what": "engine per-move latency, Mistral-7B-shaped random weights + random LoRA r=16, real tokenizer",
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quantization": loaded.quantization,
        "dtype": loaded.dtype,
        "load_s": round(load_s, 1),
        "peak_memory_gb_after_load": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    }
    print(res, flush=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    constrained = EngineConfig()
    generate = EngineConfig()
    generate.search.mode = "generate"
    generate.search.retries = 0
    generate.search.fallback = "random"
    players = {"constrained": Player(constrained, scorer), "generate": Player(generate, scorer)}

    board = chess.Board()
    checkpoints = {10, 60, 150}
    timings: dict[str, dict[str, object]] = {}
    legal = {"constrained": 0, "generate": 0}
    illegal_generate = 0
    rng_moves = 0
    while board.ply() <= 150:
        if not any(board.legal_moves):
            # Mate or stalemate before ply 150 (rare for random weights): step back and
            # play another move, so the prompt keeps growing to 150 plies.
            board.pop()
            players["constrained"].config.search.temperature = 1.0
        if board.ply() in checkpoints:
            entry: dict[str, object] = {"legal_moves": board.legal_moves.count()}
            prompt = players["constrained"].prompt_for(board)
            entry["prompt_tokens"] = scorer.count_tokens(prompt)
            for name, player in players.items():
                player.choose(board)  # warm-up
                ts = []
                for _ in range(args.reps):
                    sync()
                    t = time.perf_counter()
                    d = player.choose(board)
                    sync()
                    ts.append((time.perf_counter() - t) * 1000)
                    assert d.move is None or d.move in board.legal_moves
                entry[f"{name}_ms"] = round(statistics.median(ts), 1)
            ids = torch.tensor([scorer.encode(prompt.text, add_special_tokens=True)], device=loaded.device)
            with torch.inference_mode():
                loaded.model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
                ts = []
                for _ in range(args.reps):
                    sync()
                    t = time.perf_counter()
                    loaded.model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
                    sync()
                    ts.append((time.perf_counter() - t) * 1000)
            entry["plain_generate6_ms"] = round(statistics.median(ts), 1)
            timings[f"ply{board.ply()}"] = entry
            print(board.ply(), entry, flush=True)
        d = players["constrained"].choose(board)
        assert d.move is not None and d.move in board.legal_moves
        legal["constrained"] += 1
        g = players["generate"].choose(board)
        if g.source == "model":
            legal["generate"] += 1
        else:
            illegal_generate += 1
        board.push(d.move)
        rng_moves += 1
    res["timings"] = timings
    res["moves_played"] = rng_moves
    res["generate_mode_first_try_legal"] = legal["generate"]
    res["generate_mode_invalid_outputs"] = illegal_generate
    res["note"] = (
        "constrained = score every legal move's SAN tokens in one batched forward on the shared prompt; "
        "generate = one free generation (max 8 tokens) parsed by python-chess; random weights rarely write a "
        "legal move, so generate-mode times are for one try"
    )
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
