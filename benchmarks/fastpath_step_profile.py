"""Where a fast-path step's GPU time goes: kernel times of one game's step and of a
batched step of several games, NF4 + LoRA (GPU machine).

The model of ``fastpath_latency.py`` (Mistral-7B-shaped random weights, random LoRA
r=16 on all linears, the real tokenizer), its scorer run eagerly (no CUDA graphs: the
profiler then sees each kernel; kernel times are those of a replay). Games are
random legal games; each measured step feeds every game the two plies since its
previous step (the steady state of a game: a few new prompt tokens and the candidate
trie). For each batch size, ``--reps`` steps are profiled with ``torch.profiler``;
the JSON has the kernels by total time and the time per step by kind of kernel.

    python benchmarks/fastpath_step_profile.py --tokenizer .gpu2/tokenizer --out $OUT/fastpath_step_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import chess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_latency import make_models  # noqa: E402

KINDS = (  # (kind, substrings of the kernel name), first match wins
    ("nf4 kernel (engine/nf4gemm)", ("nf4_matmul",)),
    ("nf4 dequantize (bitsandbytes)", ("dequantize", "kDequant")),
    ("matrix products (cuBLAS)", ("gemm", "gemv", "cutlass", "nvjet", "sm90_xmma", "sm80_xmma", "splitKreduce",
                                  "aten::mm", "aten::addmm", "aten::bmm")),
    ("attention (SDPA)", ("fmha", "attention", "flash", "efficient")),
    ("index_select / index_copy / gather", ("index", "gather", "scatter")),
    ("copies and concatenation", ("copy", "cat", "Memcpy", "memcpy", "Memset")),
    ("softmax / logsumexp / reductions", ("softmax", "logsumexp", "reduce")),
    ("norms", ("rms_norm", "norm")),
)


def kind_of(name: str) -> str:
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other elementwise"


def game_boards(n: int, start_ply: int, reps: int, seed: int) -> list[list[chess.Board]]:
    """``n`` random games; for each, its boards at ``start_ply``, +2, ..., +2*reps."""
    rng = random.Random(seed)
    games = []
    for _ in range(n):
        while True:
            board = chess.Board()
            seq = []
            for ply in range(start_ply + 2 * reps + 1):
                moves = list(board.legal_moves)
                if not moves:
                    break
                board.push(rng.choice(moves))
                if ply + 1 >= start_ply and (ply + 1 - start_ply) % 2 == 0:
                    seq.append(board.copy())
            if len(seq) == reps + 1:
                games.append(seq)
                break
    return games


def profile_size(n: int, loaded: Any, args: argparse.Namespace, cuda: bool) -> tuple[dict[str, Any], str]:
    """Profile ``args.reps`` steps of ``n`` games: (the JSON entry, the NF4 kernel note)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engine.config import EngineConfig
    from engine.fastpath import Job
    from engine.player import Player
    from engine.prompt import legal_sans
    from engine.scoring import LMScorer, candidate_job

    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=2 * n + 2, max_batch=n,
                      cuda_graphs=False)
    fp = scorer.fast_path
    note = fp.nf4_kernel_note
    games = game_boards(n, args.ply, args.reps + 1, seed=n)
    players = [Player(EngineConfig(), scorer) for _ in range(n)]

    def step(i: int) -> None:
        jobs = []
        for p, seq in zip(players, games, strict=True):
            b = seq[i]
            prompt = p.prompt_for(b, engine_color=b.turn)
            conts = [prompt.completion(s) for s in legal_sans(b, list(b.legal_moves))]
            prefix, _, tree = candidate_job(scorer.encoder, prompt, conts)
            jobs.append(Job(prefix, tree))
        fp.finish(fp.launch_jobs(jobs))

    step(0)  # the games' prompts into the caches
    step(1)
    if cuda:
        torch.cuda.synchronize()
    fed0 = fp.stats.prefix_tokens_fed + fp.stats.candidate_tokens_fed
    t = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(2, 2 + args.reps):
            step(i)
        if cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t) * 1000 / args.reps
    fed = (fp.stats.prefix_tokens_fed + fp.stats.candidate_tokens_fed - fed0) / args.reps
    from torch.autograd import DeviceType

    kernels: dict[str, float] = {}
    for ev in prof.key_averages():
        if cuda:
            # the kernels alone: an operator (aten::mm) also reports its kernels' time
            if ev.device_type != DeviceType.CUDA:
                continue
            us = float(getattr(ev, "self_device_time_total", 0.0) or getattr(ev, "self_cuda_time_total", 0.0))
        else:  # a CPU check run: the operators' own CPU time
            us = float(ev.self_cpu_time_total) if ev.key.startswith("aten::") else 0.0
        if us > 0:
            kernels[ev.key] = kernels.get(ev.key, 0.0) + us
    by_kind: dict[str, float] = {}
    for name, us in kernels.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us / 1000 / args.reps
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    fp.reset()
    scorer.fast_path = None
    return {
        "games": n,
        "tokens_fed_per_step": round(fed, 1),
        "eager_wall_ms_per_step (profiler on)": round(wall, 2),
        "gpu_kernel_ms_per_step": round(sum(kernels.values()) / 1000 / args.reps, 2),
        "ms_per_step_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": [(name[:120], round(us / 1000 / args.reps, 3)) for name, us in top],
    }, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--work", default=Path("/tmp/fastpath-bench"), type=Path)
    ap.add_argument("--out", default=Path(os.environ.get("OUT", ".")) / "fastpath_step_profile.json", type=Path)
    ap.add_argument("--games", default="1,6,16", help="batch sizes profiled")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--ply", type=int, default=60)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()

    import torch
    from loguru import logger

    from engine.config import ModelConfig
    from engine.model import load_model

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    cuda = torch.cuda.is_available()
    base, adapter = make_models(args.work, args.tokenizer, tiny=args.tiny)
    loaded = load_model(ModelConfig(path=str(base), adapter=str(adapter), quantization="nf4" if cuda else "none"))
    sizes = [int(x) for x in args.games.split(",")]
    res: dict[str, Any] = {
        "what": "GPU kernel time of fast-path steps (eager; kernel times as in a graph replay), NF4 + LoRA r=16, "
                "Mistral-7B-shaped random weights, real tokenizer; each step feeds every game two plies"
                + (" [TINY CHECK RUN]" if args.tiny else ""),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "versions": {"torch": torch.__version__},
        "quantization": loaded.quantization,
        "start_ply": args.ply,
        "steps": {},
    }
    for n in sizes:
        entry, note = profile_size(n, loaded, args, cuda)
        res["nf4_kernel"] = note
        res["steps"][str(n)] = entry
        print(json.dumps(entry, indent=1), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
