"""The fused NF4 kernel (engine/nf4gemm.py) against dequantize + product and bf16, on 7B shapes (GPU).

For each Mistral-7B projection group (q/k/v, o, gate/up, down) and a range of token
counts M, times with CUDA events, over 8 layers' worth of distinct weights (so the
weights come from HBM, not L2):

* ``kernel_best``: engine.nf4gemm.nf4_linear, the best of its set-up tile choices
  (``nf4gemm.CONFIGS``; up to 256 rows unless ``--sweep``);
* ``dequant_gemm``: bitsandbytes dequantize_4bit then F.linear (engine/fusedlinear.py's
  path without the kernel);
* ``bf16``: F.linear on bf16 weights (the floor a 16-bit model gets).

It also checks the kernel: one-hot inputs must reproduce bitsandbytes' dequantized
weights bit for bit, and random inputs must match dequantize + product to bf16
rounding. Writes one JSON.

``--explore 64 --explore-shapes gate_up`` also times a wider grid of tile configs and
variants (``explore_configs``) at those row counts and shapes, each config's time kept.

    python benchmarks/nf4_gemm_bench.py --out $OUT/nf4_gemm.json [--sweep] [--explore 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def explore_configs(m: int, k: int) -> list[tuple[int, ...]]:
    """A wider grid of kernel configs than the set-up list (``--explore``): tile width,
    row tile, K split, warps, stages and the table/byte-reading variants."""
    import itertools

    from engine import nf4gemm

    cap = max(16, 1 << (max(m, 1) - 1).bit_length())
    out: list[tuple[int, ...]] = []
    for bn, bm, split, warps, stages, variant in itertools.product(
        (64, 128, 256), (16, 64), (1, 2, 4), (4, 8), (3,),
        (nf4gemm.PRMT_LUT, nf4gemm.PRMT_LUT | nf4gemm.INTERLEAVE, nf4gemm.INTERLEAVE)
    ):
        if bm <= cap and k % (64 * split) == 0 and not (bn == 256 and warps == 4):
            out.append((bn, bm, split, warps, stages, variant))
    return out


def time_rows(timed: Any, x: Any, ws: list[Any], n: int, *, sweep: bool, explore: bool = False) -> dict[str, Any]:
    """ms for one pass over all of ``ws`` per method (and the sweep's best kernel tiles)."""
    import bitsandbytes.functional as bnbf
    import torch.nn.functional as F

    from engine import nf4gemm

    m, k = x.shape
    row: dict[str, Any] = {}
    row["bf16"] = timed(lambda: [F.linear(x, w_) for w_, *_ in ws])
    row["dequant_gemm"] = timed(lambda: [F.linear(x, bnbf.dequantize_4bit(p_, q_)) for _, p_, q_, _, _ in ws])
    best: tuple[float, Any] = (float("inf"), None)
    for cfg in nf4gemm.configs_for(m, k) if sweep or m <= 256 else []:
        def run(cfg: Any = cfg) -> Any:
            return [nf4gemm.nf4_linear(x, p_, a_, c_, n, config=cfg) for _, p_, _, a_, c_ in ws]
        t = timed(run)
        if t < best[0]:
            best = (t, list(cfg))
    if best[1] is not None:
        row["kernel_best"] = best[0]
        row["kernel_best_config"] = best[1]
    if explore:
        grid = {}
        for cfg in explore_configs(m, k):
            try:
                grid[",".join(map(str, cfg))] = timed(
                    lambda cfg=cfg: [nf4gemm.nf4_linear(x, p_, a_, c_, n, config=cfg) for _, p_, _, a_, c_ in ws],
                    reps=3)
            except Exception as exc:  # noqa: BLE001 - a tile Triton cannot build (registers, shared memory)
                grid[",".join(map(str, cfg))] = f"{type(exc).__name__}: {str(exc)[:80]}"
        times = {c: t for c, t in grid.items() if isinstance(t, float)}
        row["explore"] = grid
        if times:
            top = min(times, key=times.__getitem__)
            row["explore_best"], row["explore_best_config"] = times[top], top
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", default="1,16,32,64,96,128,192,256,384,512,768")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--explore", default="", help="row counts (comma-separated) at which to time explore_configs' grid")
    ap.add_argument("--explore-shapes", default="gate_up", help="the shapes explored (comma-separated)")
    args = ap.parse_args()

    import bitsandbytes.functional as bnbf
    import torch
    import torch.nn.functional as F

    from engine import nf4gemm

    dev = torch.device("cuda")
    torch.manual_seed(0)
    res: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "triton": __import__("triton").__version__, "layers_timed": args.layers, "shapes": {}}
    rows_list = [int(r) for r in args.rows.split(",")]

    def timed(fn: Any, reps: int = 10) -> float:
        fn()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / reps

    checks: list[dict[str, Any]] = []
    totals: dict[str, dict[int, float]] = {}
    for name, (n, k) in SHAPES.items():
        ws = []
        for _ in range(args.layers):
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
            packed, qs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
            ws.append((w, packed, qs, qs.absmax.float().contiguous(), qs.code.float().contiguous()))
        # correctness on the first layer's weight
        w, packed, qs, absmax, code = ws[0]
        deq = bnbf.dequantize_4bit(packed, qs)
        eye = torch.eye(k, device=dev, dtype=torch.bfloat16)[:64]
        onehot = nf4gemm.nf4_linear(eye, packed, absmax, code, n)
        exact = bool(torch.equal(onehot, deq[:, :64].t().contiguous()))
        for m in (1, 8, 40, 100, 256):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            want = F.linear(x, deq).float()
            got = nf4gemm.nf4_linear(x, packed, absmax, code, n).float()
            rel = float((got - want).abs().max() / want.abs().max())
            checks.append({"shape": name, "rows": m, "rel_diff_vs_dequant_gemm": rel, "onehot_exact": exact})
        print(name, "onehot exact", exact, checks[-1], flush=True)
        shape_res: dict[str, Any] = {}
        for m in rows_list:
            row = time_rows(timed, torch.randn(m, k, device=dev, dtype=torch.bfloat16), ws, n, sweep=args.sweep,
                            explore=str(m) in args.explore.split(",") and name in args.explore_shapes.split(","))
            if isinstance(row.get("explore"), dict):
                row["explore"] = {c: round(t / args.layers * 1000, 1) if isinstance(t, float) else t
                                  for c, t in row["explore"].items()}
            for key in list(row):
                if isinstance(row[key], float):
                    row[key] = round(row[key] / args.layers * 1000, 1)  # microseconds per call
                    totals.setdefault(key, {}).setdefault(m, 0.0)
                    totals[key][m] += row[key]
            shape_res[str(m)] = row
            print(name, m, {key: v for key, v in row.items() if key != "explore"}, flush=True)
        res["shapes"][name] = shape_res
        del ws
        torch.cuda.empty_cache()
    res["units"] = "microseconds per projection call (per layer); model_ms: x 32 layers, summed over the 4 groups"
    res["model_ms"] = {key: {str(m): round(v * 32 / 1000, 2) for m, v in per.items()} for key, per in totals.items()}
    res["checks"] = checks
    print("model_ms", json.dumps(res["model_ms"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
