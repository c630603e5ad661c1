"""What 4-bit weights would cost the bundled model: a probe before building a 4-bit format.

The bundled model fills the 40 MB limit with int8 weights (a scale per 64 weights); a
larger model would need smaller storage. This probe rounds the shipped model's 2-D
weights (already int8) to 4 bits in memory, a scale per group of a row, and measures
what that changes on held-out data of a built data set (``mistral-chess dataset build``):

- the mean next-token loss over whole validation games (prompt + completion text), and
- the free-generation legal rate and exact-move rate on its ``eval`` positions
  (``training.evaluation.generation_metrics``, as ``benchmarks/legal_rate.py``).

Variants: ``absmax`` (scale = max|w| / 7, levels -7..7) and ``mse`` (levels -8..7, the
scale searched over 21 clipping factors 0.5..1.0 of max|w| / 7.5 for the smallest
squared error of each group).

    python benchmarks/quant_probe.py --data DATA --positions 512 --games 64 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fake_int4(w: Any, group: int, mode: str) -> Any:
    """``w`` (rows x cols) rounded to 4-bit levels with a scale per ``group`` weights of a row."""
    import torch

    rows, cols = w.shape
    g = group if cols % group == 0 else cols
    wg = w.float().view(rows, cols // g, g)
    amax = wg.abs().amax(2, keepdim=True).clamp(min=1e-12)
    if mode == "absmax":
        s = amax / 7
        return (torch.round(wg / s).clamp(-7, 7) * s).view(rows, cols).to(w.dtype)
    if mode != "mse":
        raise ValueError(f"unknown mode {mode!r} (absmax, mse)")
    best = err_best = None
    for f in torch.linspace(0.5, 1.0, 21):
        s = amax * f / 7.5
        q = torch.round(wg / s).clamp(-8, 7) * s
        err = ((q - wg) ** 2).sum(2, keepdim=True)
        if best is None:
            best, err_best = q, err
        else:
            better = err < err_best
            best, err_best = torch.where(better, q, best), torch.where(better, err, err_best)
    return best.view(rows, cols).to(w.dtype)


def parse_variants(text: str, ap: argparse.ArgumentParser) -> list[tuple[str, int]]:
    """``MODE:GROUP,...`` as (mode, group) pairs; a bad one stops before any model is loaded."""
    out = []
    for spec in filter(None, text.split(",")):
        mode, _, group = spec.partition(":")
        if mode not in ("absmax", "mse") or not group.isdigit() or int(group) < 1:
            ap.error(
                f"--variants: {spec!r} is not MODE:GROUP with MODE absmax or mse and GROUP a positive integer"
            )
        out.append((mode, int(group)))
    return out


def stored_label(path: str) -> str:
    """How the model folder stores its weights, for the results' first row."""
    from safetensors import safe_open

    from engine.int8store import INT8_FILE, SCALE_SUFFIX, is_int8_folder

    if not is_int8_folder(path):
        return "as stored"
    with safe_open(str(Path(path) / INT8_FILE), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith(SCALE_SUFFIX))  # noqa: SIM118 - safe_open is not iterable
        cols = f.get_slice(name[: -len(SCALE_SUFFIX)]).get_shape()[1]
        shape = f.get_slice(name).get_shape()
    groups = shape[1] if len(shape) == 2 else 1
    return (
        "as stored (int8, a scale per row)"
        if groups == 1
        else f"as stored (int8, a scale per {cols // groups})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a built data set (validation + eval parquet)")
    ap.add_argument("--model", default="engine/data/bundled-model")
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--games", type=int, default=64, help="validation examples for the loss")
    ap.add_argument(
        "--variants",
        default="absmax:32,mse:32,mse:64,mse:128",
        help="MODE:GROUP,... (empty: the stored model only)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    variants = parse_variants(args.variants, ap)

    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from engine.int8store import load_causal_lm
    from training.data import load_eval_positions
    from training.evaluation import generation_metrics

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_causal_lm(args.model, dtype=torch.float32).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    positions = load_eval_positions(args.data, args.positions)
    files = sorted(Path(args.data).glob("validation-*.parquet"))
    if not positions or not files:
        raise SystemExit(
            f"{args.data}: no eval positions or validation files (build it with `mistral-chess dataset build`)"
        )
    texts = [r["prompt"] + r["completion"] for r in pq.read_table(files[0]).to_pylist()[: args.games]]

    def measure() -> dict[str, float]:
        t = time.perf_counter()
        total = tokens = 0.0
        with torch.no_grad():
            for text in texts:
                ids = tok(text, return_tensors="pt")["input_ids"][:, :1024]
                n = ids.shape[1] - 1
                total += float(model(input_ids=ids, labels=ids).loss) * n
                tokens += n
        m = generation_metrics(
            model, tok, positions, device=torch.device("cpu"), max_new_tokens=4, batch_size=64
        )
        return {"loss": round(total / tokens, 4), "loss_tokens": int(tokens),
                "legal_rate": m["legal_rate"], "exact_move": m["exact_move_accuracy"],
                "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip

    res: dict[str, Any] = {
        "what": "4-bit rounding of the bundled model's 2-D weights in memory (a probe, no 4-bit format exists)",
        "model": args.model, "data": args.data, "positions": len(positions), "validation_examples": len(texts),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "variants": {},
    }  # fmt: skip
    label = stored_label(args.model)
    res["variants"][label] = r = measure()
    print(label, r, flush=True)
    for mode, group in variants:
        state = {k: fake_int4(v, group, mode) if v.dim() == 2 and v.is_floating_point() else v
                 for k, v in original.items()}  # fmt: skip
        model.load_state_dict(state)
        res["variants"][f"int4 {mode}, a scale per {group}"] = r = measure()
        print(f"{mode}:{group}", r, flush=True)
    model.load_state_dict(original)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
