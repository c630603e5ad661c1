"""Training throughput of the bundled model's recipe (``configs/train/scratch-medium.yaml``,
18.8M parameters, batch 64 x 1,024) under the trainer's speed options, side by side in
one job (issue 8's training budget: v3 trained at 0.3-0.5 M tokens/s on an H100).

Each variant is one ``mistral-chess train`` process on the same data, seed and steps:

``eager_sdpa``       the config as it is (the baseline: what v3 was trained with)
``compile``          ``train.compile=true``: the training forward under torch.compile
``liger``            ``fast.enabled=true``: Liger's RMSNorm, RoPE, SwiGLU, fused linear cross-entropy
``flex``             ``model.attn_implementation=flex_attention`` (block mask from the packed rows)
``compile_flex``     both
``compile_liger``    both

tokens/s is the trainer's own figure (real tokens, no padding, time in train steps only),
median over the logging windows after the first two (compiling happens there); losses of
the first window are compared with the baseline's (same data order, so they differ only by
kernel numerics). Peak memory is ``torch.cuda.max_memory_allocated``.

    python3 benchmarks/scratch_train_bench.py --games DIR [--games DIR ...] --out $OUT
    python3 benchmarks/scratch_train_bench.py --games DIR --out /tmp/sb --smoke   # CPU: code paths only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "eager_sdpa": [],
    "compile": ["train.compile=true"],
    "liger": ["fast.enabled=true"],
    "flex": ["model.attn_implementation=flex_attention"],
    "compile_flex": ["train.compile=true", "model.attn_implementation=flex_attention"],
    "compile_liger": ["train.compile=true", "fast.enabled=true"],
}


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "triton", "liger-kernel"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        out["device"] = f"unknown ({exc})"
    return out


def build(games: list[str], work: Path, workers: int) -> Path:
    data = work / "data"
    if (data / "stats.json").is_file():
        return data
    sources = [arg for g in games for arg in ("--source", g)]
    cmd = [sys.executable, "-m", "training", "dataset", "build", "--config", "configs/dataset/scratch-games.yaml",
           *sources, "--out", str(data), "--no-progress", f"workers={workers}"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    return data


def run_variant(name: str, extra: list[str], data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"run-{name}"
    cmd = [
        sys.executable, "-m", "training", "train", "--config", "configs/train/scratch-medium.yaml",
        f"data.path={data}", f"train.output_dir={out}", f"train.max_steps={args.steps}",
        f"train.logging_steps={args.log_every}", "train.save_steps=0", "train.resume=never",
        "eval.eval_steps=0", "eval.generation_positions=0", "data.max_eval_examples=64",
        "model.tokenizer=engine/data/bundled-model",  # the shipped 4,096-token BPE: no tokenizer training per run
        *args.override, *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.variant_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.variant_timeout} s", "overrides": extra}
    wall = time.perf_counter() - t0
    log = out / "log.jsonl"
    if proc.returncode != 0 or not log.is_file():
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2500:], "overrides": extra}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    windows = [r for r in rows if r.get("tokens_per_s")]
    steady = windows[2:] or windows[-1:]
    return {
        "overrides": extra,
        "wall_s": round(wall, 1),
        "windows": len(windows),
        "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in steady), 1),
        "tokens_per_s_windows": [r["tokens_per_s"] for r in windows],
        "first_window_tokens_per_s": windows[0]["tokens_per_s"] if windows else None,
        "losses": [round(r["loss"], 5) for r in windows],
        "peak_memory_gb": max((r.get("peak_memory_gb") or 0.0 for r in windows), default=0.0) or None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", action="append", required=True, help="folder of games-*.parquet (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/scratch-bench")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--variant-timeout", type=float, default=240)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--override", action="append", default=[], help="key=value for every variant")
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny batches, two variants, code paths only")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.log_every = 6, 2
        args.override += ["train.per_device_train_batch_size=2", "data.max_length=256", "train.device=cpu"]
        args.only = args.only or "eager_sdpa,compile"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = build(args.games, work, args.workers)
    stats = json.loads((data / "stats.json").read_text())
    names = [n for n in (args.only.split(",") if args.only else VARIANTS) if n]
    res: dict[str, Any] = {
        "what": "scratch-medium training throughput by speed option (bundled model recipe)",
        "versions": versions(),
        "config": "configs/train/scratch-medium.yaml",
        "steps": args.steps,
        "log_every": args.log_every,
        "overrides": args.override,
        "data": {"games": args.games, "build_s": round(time.perf_counter() - t0, 1),
                 "stats": {k: stats.get(k) for k in ("examples", "games", "splits") if k in stats}},
        "variants": {},
    }  # fmt: skip
    dest = out / ("scratch_train_bench_smoke.json" if args.smoke else "scratch_train_bench.json")
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--only: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        r = run_variant(name, VARIANTS[name], data, work, args)
        res["variants"][name] = r
        base = res["variants"].get("eager_sdpa", {})
        if r.get("tokens_per_s_median") and base.get("tokens_per_s_median"):
            r["speedup_vs_eager_sdpa"] = round(r["tokens_per_s_median"] / base["tokens_per_s_median"], 2)
            r["first_loss_diff_vs_eager_sdpa"] = round(abs(r["losses"][0] - base["losses"][0]), 5)
        print(name, json.dumps({k: v for k, v in r.items() if k != "stderr_tail"}), flush=True)
        if "stderr_tail" in r:
            print(r["stderr_tail"], flush=True)
        res["total_s"] = round(time.perf_counter() - t0, 1)
        dest.write_text(json.dumps(res, indent=1))
    return 0 if any("tokens_per_s_median" in r for r in res["variants"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
