"""QLoRA training throughput on a Mistral-7B-shaped model: the project's trainer beside the
plain recipe of shared/probes/probe3.py, in one run, on one GPU.

Both sides train the same model: ``MistralConfig()`` defaults (7.24B parameters), random
weights made directly on the GPU in bf16, every decoder Linear replaced by a bitsandbytes
NF4 ``Linear4bit`` (double quantization, bf16 compute; ``lm_head`` stays bf16, as with
``BitsAndBytesConfig``), the real Mistral tokenizer, LoRA r=16 / alpha 32 / dropout 0.05
on all seven projections, AdamW, seq 512.

``project``
    :class:`training.trainer.Trainer` as ``mistral-chess train`` runs it (packing,
    completion-only loss, gradient checkpointing, bf16 autocast) on a data set made by
    :func:`training.dataset.build_dataset` from generated games (random legal games;
    Stockfish is not needed). tokens/s counts real tokens (no padding) per step.
``plain_as_written``
    probe3's loop as written: ``prepare_model_for_kbit_training`` + LoRA + AdamW on padded
    batches of random tokens, loss on every token. Its model stays in eval mode (as
    ``from_pretrained`` returns it), so neither gradient checkpointing nor dropout is active.
``plain_train_mode``
    the same loop after ``model.train()``: checkpointing and dropout active, the
    like-for-like comparison with ``project``.

Peak memory is ``torch.cuda.max_memory_allocated`` from the start of training steps,
the model already loaded. Writes ``$OUT/qlora_bench.json`` (or ``--out``).

On the GPU machine (bitsandbytes, chess, loguru, zstandard carried as wheels; a Mistral
tokenizer folder made here by ``engine.tiny.write_mistral_tokenizer``):

    PYTHONUNBUFFERED=1 python3 benchmarks/qlora_bench.py --tokenizer <dir> --out $OUT

On a CPU, ``--smoke`` runs the same code paths on a tiny config in a minute.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(res: dict[str, Any], out: Path, key: str, value: Any) -> None:
    res[key] = value
    print(key, value, flush=True)
    out.write_text(json.dumps(res, indent=1) + "\n")


# -- model ------------------------------------------------------------------------------------------


def mistral_config(smoke: bool) -> Any:
    from transformers import MistralConfig

    if not smoke:
        return MistralConfig()
    return MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )


def quantize_linears(model: Any, device: str, *, compute_dtype: Any, double_quant: bool = True) -> int:
    """Replace every Linear except ``lm_head`` by an NF4 ``bnb.nn.Linear4bit`` (in place)."""
    import bitsandbytes as bnb
    import torch

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type="nf4",
                device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=double_quant, quant_type="nf4"
            )
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            q = q.to(device)  # quantizes the weight on this device
            setattr(parent, name, q)
            del child
            count += 1
    return count


def random_nf4_mistral(hf_config: Any, device: str) -> Any:
    """A random-weight MistralForCausalLM made on ``device`` in bf16, then NF4-quantized."""
    import torch
    from transformers import MistralForCausalLM

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = MistralForCausalLM(hf_config)
    finally:
        torch.set_default_dtype(old)
    quantize_linears(model, device, compute_dtype=torch.bfloat16)
    # What from_pretrained(quantization_config=...) would mark: peft wraps Linear4bit layers
    # with its 4-bit LoRA and prepare_model_for_kbit_training enables checkpointing for it.
    model.is_loaded_in_4bit = True  # type: ignore[assignment]
    model.eval()  # as from_pretrained returns it
    if device == "cuda":
        torch.cuda.empty_cache()
    return model


# -- data -------------------------------------------------------------------------------------------


def random_games_parquet(path: Path, games: int, max_plies: int, seed: int = 0) -> Path:
    """Random legal games in the LAION schema (Result/Termination from the final position)."""
    import chess
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    moves_col, term_col, result_col = [], [], []
    for _ in range(games):
        board = chess.Board()
        moves: list[str] = []
        while len(moves) < max_plies:
            outcome = board.outcome()
            if outcome is not None:
                break
            move = rng.choice(list(board.legal_moves))
            board.push(move)
            moves.append(move.uci())
        outcome = board.outcome()
        moves_col.append(moves)
        term_col.append(outcome.termination.name if outcome else "")
        result_col.append(outcome.result() if outcome else rng.choice(["1-0", "0-1", "1/2-1/2"]))
    table = pa.table(
        {"Moves": pa.array(moves_col, pa.list_(pa.string())), "Termination": term_col, "Result": result_col}
    )
    pq.write_table(table, path)
    return path


# -- the two sides --------------------------------------------------------------------------------------


def run_project(args: argparse.Namespace, work: Path, tok_dir: Path, device: str, res: dict[str, Any], out: Path) -> None:
    import torch

    from training.config import load_dataset_config, load_train_config
    from training.dataset import build_dataset
    from training.trainer import Trainer

    games = random_games_parquet(work / "games.parquet", args.games, max_plies=120)
    data = work / "data"
    t = time.perf_counter()
    stats = build_dataset(
        load_dataset_config(
            None,
            [
                f"sources=[{{path: {games}}}]",
                f"out={data}",
                f"tokenizer={tok_dir}",
                f"max_length={args.seq}",
                "examples.positions_per_game=8",
                "split.validation_fraction=0",
                "workers=0",
            ],
        ),
        progress_bar=False,
    )
    log(res, out, "data", {
        "games": stats["games"]["used"], "examples": stats["examples"]["train"]["total"],
        "mean_tokens_per_example": stats["tokens"]["train"]["mean_per_example"],
        "build_s": round(time.perf_counter() - t, 1),
    })  # fmt: skip

    model_dir = work / "model"  # config + tokenizer only: the weights are made in memory
    mistral_config(args.smoke).save_pretrained(str(model_dir))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(model_dir))
    steps = args.warmup + args.steps
    cfg = load_train_config(
        None,
        [
            f"model.path={model_dir}",
            "quantization.load_in_4bit=true",
            f"lora.target_modules=[{','.join(TARGETS)}]",
            "lora.lora_r=16",
            "lora.lora_alpha=32",
            "lora.lora_dropout=0.05",
            f"data.path={data}",
            f"data.max_length={args.seq}",
            "data.packing=true",
            "eval.eval_steps=0",
            "eval.generation_positions=0",
            f"train.output_dir={work / 'run'}",
            f"train.max_steps={steps}",
            f"train.per_device_train_batch_size={args.batch}",
            "train.gradient_accumulation_steps=1",
            "train.logging_steps=1",
            "train.save_steps=0",
            "train.learning_rate=1.0e-4",
            f"train.device={device}",
            f"train.bf16={'true' if device == 'cuda' else 'false'}",
        ],
    )
    t = time.perf_counter()
    trainer = Trainer(cfg, base_loader=lambda c, hf_config, dev: random_nf4_mistral(hf_config, dev))
    trainer.setup()
    log(res, out, "project_setup_s", round(time.perf_counter() - t, 1))
    if device == "cuda":
        log(res, out, "project_model_GB", round(torch.cuda.memory_allocated() / 1e9, 2))
        torch.cuda.reset_peak_memory_stats()
    entries: list[dict[str, Any]] = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        stats_step = trainer.train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        entries.append({"s": time.perf_counter() - t, **stats_step})
    timed = entries[args.warmup :]
    step_s = statistics.median(e["s"] for e in timed)
    real = statistics.median(e["tokens"] for e in timed)
    width = args.batch * args.seq
    log(res, out, "project", {
        "batch": args.batch, "seq": args.seq, "steps_timed": len(timed),
        "step_s_median": round(step_s, 4),
        "real_tokens_per_step": real,
        "real_tokens_per_s": round(real / step_s, 1),
        "row_fill": round(real / width, 3),
        "completion_tokens_per_step": statistics.median(e["completion_tokens"] for e in timed),
        "loss_first_last": [round(entries[0]["loss"], 4), round(entries[-1]["loss"], 4)],
        "peak_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device == "cuda" else None,
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "trainable_params": trainer.params_info["trainable"],
    })  # fmt: skip
    del trainer
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_plain(args: argparse.Namespace, device: str, res: dict[str, Any], out: Path, *, train_mode: bool) -> None:
    """probe3's QLoRA loop: prepare_model_for_kbit_training + LoRA + AdamW, random tokens."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    key = "plain_train_mode" if train_mode else "plain_as_written"
    q = random_nf4_mistral(mistral_config(args.smoke), device)
    q.config.use_cache = False
    q = prepare_model_for_kbit_training(q, use_gradient_checkpointing=True)
    p = get_peft_model(q, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM", target_modules=TARGETS))
    if train_mode:
        p.train()
    opt = torch.optim.AdamW([x for x in p.parameters() if x.requires_grad], lr=1e-4)
    ids = torch.randint(100, 30000, (args.batch, args.seq), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ts = []
    for i in range(args.warmup + args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = p(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            ts.append(time.perf_counter() - t)
    step = statistics.median(ts)
    log(res, out, key, {
        "batch": args.batch, "seq": args.seq, "steps_timed": len(ts),
        "step_s_median": round(step, 4),
        "tokens_per_s": round(args.batch * args.seq / step, 1),
        "peak_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device == "cuda" else None,
        # The decoder's own mode: in eval mode transformers skips gradient checkpointing.
        "decoder_training_mode": bool(_decoder_layer(p).training),
    })  # fmt: skip
    del p, q, opt
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _decoder_layer(peft_model: Any) -> Any:
    return peft_model.get_base_model().model.layers[0]


def resolve_tokenizer(arg: str | None, work: Path) -> Path:
    for candidate in (arg, os.environ.get("MISTRAL_CHESS_TOKENIZER_DIR")):
        if candidate:
            if not (Path(candidate) / "tokenizer.json").is_file():
                raise SystemExit(f"{candidate}: no tokenizer.json (make one with engine.tiny.write_mistral_tokenizer)")
            return Path(candidate)
    from engine.tiny import write_mistral_tokenizer

    return write_mistral_tokenizer(work / "tokenizer")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the code paths")
    ap.add_argument("--tokenizer", help="Mistral tokenizer folder (default: $MISTRAL_CHESS_TOKENIZER_DIR, else mistral-common)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--games", type=int, default=400)
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for qlora_bench.json")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.games = min(args.steps, 3), 1, min(args.games, 40)
        args.batch, args.seq = min(args.batch, 2), min(args.seq, 256)

    import torch
    import transformers

    from training.cli import configure_logging

    configure_logging("WARNING")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    out = Path(args.out) / "qlora_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {}
    versions: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
    }  # fmt: skip
    for name in ("peft", "bitsandbytes", "accelerate"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    log(res, out, "versions", versions)
    log(res, out, "device", torch.cuda.get_device_name() if device == "cuda" else f"cpu (smoke={args.smoke})")
    cfg = mistral_config(args.smoke)
    log(res, out, "model", {
        "config": "MistralConfig() defaults" if not args.smoke else "tiny smoke config",
        "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size,
        "weights": "random, bf16 on the device, decoder Linears -> bnb NF4 Linear4bit (double quant)",
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_dir = resolve_tokenizer(args.tokenizer, work)
        t = time.perf_counter()
        run_project(args, work, tok_dir, device, res, out)
        log(res, out, "project_total_s", round(time.perf_counter() - t, 1))
        if not args.skip_plain:
            run_plain(args, device, res, out, train_mode=False)
            run_plain(args, device, res, out, train_mode=True)
    if args.smoke:
        log(res, out, "note", "smoke run on a CPU with a tiny model: checks the code paths; its timings mean nothing")
    if "plain_train_mode" in res:
        log(res, out, "ratio_project_real_tokens_vs_plain_train_mode",
            round(res["project"]["real_tokens_per_s"] / res["plain_train_mode"]["tokens_per_s"], 3))  # fmt: skip
        log(res, out, "ratio_project_real_tokens_vs_plain_as_written",
            round(res["project"]["real_tokens_per_s"] / res["plain_as_written"]["tokens_per_s"], 3))  # fmt: skip
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
