"""QLoRA training throughput of the project's fast mode (``fast.enabled``) beside the plain
recipe of shared/probes/probe3.py, in one job, on one GPU (issue 7, target 3).

The model is the one of ``benchmarks/qlora_bench.py``: ``MistralConfig()`` defaults
(7.24B parameters), random weights made on the GPU in bf16, every decoder Linear an NF4
``Linear4bit`` (double quantization, bf16 compute), the real Mistral tokenizer, LoRA
r=16 / alpha 32 / dropout 0.05 on all seven projections, AdamW.

Variants, each in its own process (Liger patches transformers' Mistral module, and a
fresh process gives each its own peak memory):

``plain_as_written`` / ``plain_train_mode``
    probe3's loop at 4 x 512 on random tokens (``qlora_bench.run_plain``); loss on every token.
``project_plain``
    :class:`training.trainer.Trainer` without the fast mode (prepare_model_for_kbit_training,
    checkpointing in every layer) on the chess data below.
``fast_*``
    the same trainer with ``fast.enabled=true``: micro-batch, checkpointed share of layers and
    Liger on/off as named; effective batch ``batch x accum`` rows of up to 1024 tokens.

Data: next-move examples built by :func:`training.dataset.build_dataset` from random legal
games of up to 300 plies, so prompts run from a few dozen to 1024 tokens (the length
percentiles are in the JSON), packed into rows of 1024 with ``position_ids`` restarting per
example. tokens/s counts real tokens (no padding); peak memory is
``torch.cuda.max_memory_allocated`` over the training steps, the model included.
The first step's loss does not depend on the LoRA dropout draws (LoRA B starts at zero),
so ``project_plain`` and the fast variants of the same batch shape must agree on it.

    PYTHONUNBUFFERED=1 python3 benchmarks/qlora_fast_bench.py --out $OUT
    python benchmarks/qlora_fast_bench.py --smoke --out /tmp      # CPU: code paths only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from qlora_bench import (  # noqa: E402
    TARGETS,
    mistral_config,
    random_games_parquet,
    random_nf4_mistral,
    resolve_tokenizer,
    run_plain,
)

SEQ = 1024
# name -> settings. The default run (what benchmarks/results/qlora_fast_bench_h100.json holds),
# most telling first in case the time budget runs out; about 330 s on the H100.
VARIANTS: dict[str, dict[str, Any]] = {
    "plain_as_written": {"kind": "plain", "train_mode": False},
    "plain_train_mode": {"kind": "plain", "train_mode": True},
    "project_plain": {"kind": "project", "fast": False, "batch": 4, "accum": 2, "gc": 1.0, "liger": False},
    "fast_liger_b4_gc0.25": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.25, "liger": True},
    "fast_liger_b4_gc0": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.0, "liger": True},
    "fast_liger_b2_gc0": {"kind": "project", "fast": True, "batch": 2, "accum": 4, "gc": 0.0, "liger": True},
    "fast_liger_b8_gc0.5": {"kind": "project", "fast": True, "batch": 8, "accum": 1, "gc": 0.5, "liger": True},
    "fast_noliger_b4_gc0.25": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.25, "liger": False},
}
# Not run yet on the GPU (name them with --only): LoRA dropout 0 (peft then keeps no
# dropped copy of each adapter input), more checkpointing, one profiled step.
EXTRA: dict[str, dict[str, Any]] = {
    "fast_liger_b4_gc0.5": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.5, "liger": True},
    "fast_liger_b4_gc0_drop0": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.0, "liger": True, "dropout": 0.0},
    "fast_liger_b4_gc0.25_drop0": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.25, "liger": True, "dropout": 0.0},
    "fast_liger_b8_gc0.5_drop0": {"kind": "project", "fast": True, "batch": 8, "accum": 1, "gc": 0.5, "liger": True, "dropout": 0.0},
    "fast_liger_b8_gc0.75_drop0": {"kind": "project", "fast": True, "batch": 8, "accum": 1, "gc": 0.75, "liger": True, "dropout": 0.0},
    "fast_noliger_b4_gc0.5": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.5, "liger": False},
    # train.compile: the training forward under torch.compile (bitsandbytes' 4-bit ops are
    # torch custom ops), against the host-bound eager step; Liger's kernels on and off.
    "fast_liger_b4_gc0.25_drop0_compile": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.25, "liger": True, "dropout": 0.0, "compile": True},
    "fast_noliger_b4_gc0.25_drop0_compile": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.25, "liger": False, "dropout": 0.0, "compile": True},
    "fast_noliger_b4_gc0_drop0_compile": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.0, "liger": False, "dropout": 0.0, "compile": True},
    # One step under torch.profiler: GPU busy time against the step's wall time.
    "profile_fast_liger_b4_gc0": {"kind": "project", "fast": True, "batch": 4, "accum": 2, "gc": 0.0, "liger": True, "profile": True},
}


def versions() -> dict[str, str | None]:
    import torch
    import transformers

    out: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
    }  # fmt: skip
    for name in ("peft", "bitsandbytes", "accelerate", "triton", "liger_kernel"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None)
            if name == "liger_kernel" and out[name] is None:
                from importlib.metadata import version

                out[name] = version("liger-kernel")
        except ImportError:
            out[name] = None
    return out


# -- one variant (child process) --------------------------------------------------------------------


def run_project_variant(v: dict[str, Any], args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    from training.config import load_train_config
    from training.trainer import Trainer

    steps = args.warmup + args.steps
    cfg = load_train_config(
        None,
        [
            f"model.path={args.model_dir}",
            "quantization.load_in_4bit=true",
            f"lora.target_modules=[{','.join(TARGETS)}]",
            "lora.lora_r=16",
            "lora.lora_alpha=32",
            f"lora.lora_dropout={v.get('dropout', 0.05)}",
            f"data.path={args.data}",
            f"data.max_length={args.seq}",
            "data.packing=true",
            "eval.eval_steps=0",
            "eval.generation_positions=0",
            f"train.output_dir={args.work / 'run'}",
            f"train.max_steps={steps}",
            f"train.per_device_train_batch_size={v['batch']}",
            f"train.gradient_accumulation_steps={v['accum']}",
            "train.logging_steps=1",
            "train.save_steps=0",
            "train.learning_rate=1.0e-4",
            f"train.device={device}",
            f"train.bf16={'true' if device == 'cuda' else 'false'}",
            f"train.gradient_checkpointing={'true' if v['gc'] > 0 else 'false'}",
            f"train.gradient_checkpointing_fraction={v['gc']}",
            f"fast.enabled={'true' if v['fast'] else 'false'}",
            f"train.compile={'true' if v.get('compile') else 'false'}",
            # Required on the GPU (a missing liger-kernel is an error, not a silent fallback).
            f"fast.liger={('true' if device == 'cuda' else 'auto') if v['liger'] else 'false'}",
        ],
    )
    t = time.perf_counter()
    trainer = Trainer(cfg, base_loader=lambda c, hf_config, dev: random_nf4_mistral(hf_config, dev))
    trainer.setup()
    res: dict[str, Any] = {"setup_s": round(time.perf_counter() - t, 1)}
    cuda = device == "cuda"
    if cuda:
        res["model_GB"] = round(torch.cuda.memory_allocated() / 1e9, 2)
        torch.cuda.reset_peak_memory_stats()
    entries: list[dict[str, Any]] = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        stats = trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        entries.append({"s": time.perf_counter() - t, **stats})
    if v.get("profile"):
        res["profile"] = profile_step(trainer, Path(args.profile_dir) / f"{args.variant}.txt")
    timed = entries[args.warmup :]
    step_s = statistics.median(e["s"] for e in timed)
    real = statistics.median(e["tokens"] for e in timed)
    base = trainer.acc.unwrap_model(trainer.model).get_base_model()
    res.update({
        "batch": v["batch"], "accum": v["accum"], "seq": args.seq, "effective_batch_tokens": v["batch"] * v["accum"] * args.seq,
        "fast": v["fast"], "liger": v["liger"], "gradient_checkpointing_fraction": v["gc"],
        "lora_dropout": v.get("dropout", 0.05), "compile": bool(v.get("compile")),
        "checkpointed_layers": sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in base.model.layers),
        "steps_timed": len(timed), "step_s_median": round(step_s, 4),
        "real_tokens_per_step": real, "real_tokens_per_s": round(real / step_s, 1),
        "row_fill": round(real / (v["batch"] * v["accum"] * args.seq), 3),
        "completion_tokens_per_step": statistics.median(e["completion_tokens"] for e in timed),
        "losses": [round(e["loss"], 5) for e in entries],
        "peak_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "peak_reserved_GB": round(torch.cuda.max_memory_reserved() / 1e9, 2) if cuda else None,
        "embed_dtype": str(base.model.embed_tokens.weight.dtype),
        # What ran, not what was asked (fast.liger=auto falls back on a CPU).
        "liger_loss_applied": "liger" in getattr(getattr(base.forward, "__func__", None), "__module__", ""),
    })  # fmt: skip
    return res


def profile_step(trainer: Any, table: Path) -> dict[str, Any]:
    """One more optimizer step under torch.profiler: how much of its wall time the GPU was busy."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t = time.perf_counter()
        trainer.train_step()
        sync()
        wall = time.perf_counter() - t
    events = prof.key_averages()

    def dev(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    busy = sum(dev(e) for e in events) / 1e6
    table.parent.mkdir(parents=True, exist_ok=True)
    sort = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    table.write_text(events.table(sort_by=sort, row_limit=40))
    top = sorted(events, key=dev, reverse=True)[:12]
    return {
        "step_wall_s_profiled": round(wall, 3), "gpu_busy_s": round(busy, 3),
        "top_gpu_ops_s": {e.key[:80]: round(dev(e) / 1e6, 4) for e in top},
    }  # fmt: skip


def child(args: argparse.Namespace) -> int:
    import torch

    from training.cli import configure_logging

    configure_logging("WARNING")
    v = {**VARIANTS, **EXTRA}[args.variant]
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.work = Path(tempfile.mkdtemp(prefix=f"qfb-{args.variant}-"))
    if v["kind"] == "plain":
        res: dict[str, Any] = {}
        ns = argparse.Namespace(smoke=args.smoke, batch=4 if not args.smoke else 2, seq=512 if not args.smoke else 64,
                                warmup=args.warmup, steps=args.steps)  # fmt: skip
        run_plain(ns, device, res, args.work / "plain.json", train_mode=v["train_mode"])
        out = next(iter(res.values()))
    else:
        out = run_project_variant(v, args, device)
    Path(args.result).write_text(json.dumps(out, indent=1) + "\n")
    return 0


# -- the job (parent process) ---------------------------------------------------------------------------


def build_data(work: Path, tok_dir: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    import numpy as np
    from transformers import AutoTokenizer

    from training.config import load_dataset_config
    from training.data import load_examples
    from training.dataset import build_dataset

    games = random_games_parquet(work / "games.parquet", args.games, max_plies=300)
    data = work / "data"
    t = time.perf_counter()
    stats = build_dataset(
        load_dataset_config(
            None,
            [
                f"sources=[{{path: {games}}}]", f"out={data}", f"tokenizer={tok_dir}", f"max_length={args.seq}",
                "examples.positions_per_game=8", "split.validation_fraction=0", "workers=0",
            ],
        ),
        progress_bar=False,
    )  # fmt: skip
    lengths = load_examples(data, "train", AutoTokenizer.from_pretrained(str(tok_dir)), max_length=args.seq).lengths
    info = {
        "games": stats["games"]["used"], "max_plies": 300, "examples": int(len(lengths)),
        "dropped_over_max_length": stats.get("examples_dropped_too_long"),
        "tokens_per_example": {
            "mean": round(float(lengths.mean()), 1),
            **{f"p{q}": int(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 95)}, "max": int(lengths.max()),
        },
        "build_s": round(time.perf_counter() - t, 1),
    }  # fmt: skip
    return data, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the code paths")
    ap.add_argument("--tokenizer", help="Mistral tokenizer folder (default: $MISTRAL_CHESS_TOKENIZER_DIR)")
    ap.add_argument("--seq", type=int, default=SEQ)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--games", type=int, default=300)
    ap.add_argument("--budget-s", type=float, default=480, help="start no variant after this many seconds")
    ap.add_argument("--only", nargs="*", help=f"variants to run (default: {', '.join(VARIANTS)}; also {', '.join(EXTRA)})")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for qlora_fast_bench.json")
    # child-process arguments
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--profile-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.games, args.seq = 1, 1, min(args.games, 30), min(args.seq, 256)
    if args.variant:
        return child(args)
    unknown = [n for n in args.only or [] if n not in VARIANTS and n not in EXTRA]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}")

    t0 = time.perf_counter()
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    out = Path(args.out) / "qlora_fast_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "versions": versions(),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu (smoke={args.smoke})",
        "model": "MistralConfig() defaults, random weights, decoder Linears NF4 (double quant), lm_head bf16"
        if not args.smoke else "tiny smoke config",
        "lora": "r=16, alpha 32, dropout 0.05, all seven projections; AdamW lr 1e-4",
        "variants": {},
    }  # fmt: skip

    def save() -> None:
        out.write_text(json.dumps(res, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_dir = resolve_tokenizer(args.tokenizer, work)
        data, res["data"] = build_data(work, tok_dir, args)
        print("data", res["data"], flush=True)
        model_dir = work / "model"  # config + tokenizer: the weights are made in memory
        mistral_config(args.smoke).save_pretrained(str(model_dir))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(model_dir))
        save()
        for name in args.only or list(VARIANTS):
            left = args.budget_s - (time.perf_counter() - t0)
            if left < 20:
                res["variants"][name] = {"skipped": "time budget"}
                continue
            result = work / f"{name}.json"
            cmd = [sys.executable, __file__, "--variant", name, "--data", str(data), "--model-dir", str(model_dir),
                   "--result", str(result), "--seq", str(args.seq), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--profile-dir", str(out.parent)]
            cmd += ["--smoke"] if args.smoke else []  # fmt: skip
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(left + 30, 330 if {**VARIANTS, **EXTRA}[name].get("compile") else 150))
                if proc.returncode == 0 and result.is_file():
                    entry = json.loads(result.read_text())
                else:
                    tail = (proc.stderr or proc.stdout)[-1500:]
                    entry = {"error": f"exit {proc.returncode}", "oom": "OutOfMemoryError" in tail, "log_tail": tail}
            except subprocess.TimeoutExpired:
                entry = {"error": "timed out"}
            entry["wall_s"] = round(time.perf_counter() - t, 1)
            res["variants"][name] = entry
            print(name, json.dumps(entry), flush=True)
            save()
    summarize(res)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    if args.smoke:
        res["note"] = "smoke run on a CPU with a tiny model: checks the code paths; its timings mean nothing"
    save()
    print(json.dumps({k: v for k, v in res.items() if k != "variants"}, indent=1))
    return 0


def summarize(res: dict[str, Any]) -> None:
    """The best fast variant within 24 GB, its ratios to the plain recipe, first-step loss agreement."""
    vs = res["variants"]
    ok = {k: v for k, v in vs.items() if k.startswith("fast_") and "real_tokens_per_s" in v}
    summary_all = {k: (v["real_tokens_per_s"], v["peak_GB"]) for k, v in ok.items()}
    fits = {k: v for k, v in ok.items() if v.get("peak_GB") is None or v["peak_GB"] <= 24.0}
    summary: dict[str, Any] = {}
    if fits:
        best = max(fits, key=lambda k: fits[k]["real_tokens_per_s"])
        b = fits[best]
        summary = {"best_fast_within_24GB": best, "real_tokens_per_s": b["real_tokens_per_s"], "peak_GB": b["peak_GB"],
                   "effective_batch_tokens": b["effective_batch_tokens"]}  # fmt: skip
        for plain in ("plain_as_written", "plain_train_mode", "project_plain"):
            tps = vs.get(plain, {}).get("tokens_per_s") or vs.get(plain, {}).get("real_tokens_per_s")
            if tps:
                summary[f"ratio_vs_{plain}"] = round(b["real_tokens_per_s"] / tps, 3)
    ref = vs.get("project_plain", {}).get("losses")
    if ref:
        summary["first_step_loss"] = {
            k: v["losses"][0] for k, v in vs.items() if "losses" in v and (v["batch"], v["accum"]) == (4, 2)
        }
    summary["fast_tokens_per_s_and_peak_GB"] = summary_all
    res["summary"] = summary


if __name__ == "__main__":
    raise SystemExit(main())
