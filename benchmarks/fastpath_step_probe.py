"""Run benchmarks/fastpath_latency.py unchanged, with probes: for every fast-path step,
the wall time of FastPath._step (host index building + copy + replay + copy back) and,
on CUDA, the GPU time of the graph replay alone (CUDA events), grouped by graph key
(tokens, row length, keys, rows). Also the real tokens vs the projection rows (t_b)
vs the attention query rows (rows * row length). Summary: <out>.probe.json and stdout.

    python benchmarks/fastpath_step_probe.py <fastpath_latency.py arguments>   (from the repository root)
"""
import collections
import json
import runpy
import statistics as st
import sys
import threading
import time
from pathlib import Path

import engine.fastpath as fpm

tl = threading.local()
steps: list[dict] = []
events: list[tuple] = []
o_step, o_run_graph, o_key = fpm.FastPath._step, fpm.FastPath._run_graph, fpm.FastPath.graph_key


def graph_key(self, T, E, Lp, needed, n_rows):
    k = o_key(self, T, E, Lp, needed, n_rows)
    tl.info = {"T": T, "Lp": Lp, "games": n_rows, "key": k}
    return k


def run_graph(self, key, inp):
    tl.key = key
    return o_run_graph(self, key, inp)


def step(self, rows):
    tl.info, tl.key = None, None
    t = time.perf_counter()
    try:
        return o_step(self, rows)
    finally:
        rec = dict(tl.info or {})
        rec["step_ms"] = (time.perf_counter() - t) * 1000
        rec["graph"] = tl.key is not None
        steps.append(rec)


fpm.FastPath.graph_key, fpm.FastPath._run_graph, fpm.FastPath._step = graph_key, run_graph, step

try:
    import torch

    if torch.cuda.is_available():
        o_replay = torch.cuda.CUDAGraph.replay

        def replay(self):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            o_replay(self)
            b.record()
            events.append((getattr(tl, "key", None), len(steps), a, b))

        torch.cuda.CUDAGraph.replay = replay
except ImportError:
    pass

args = sys.argv[1:]
sys.argv = ["fastpath_latency.py"] + args
out = Path(args[args.index("--out") + 1]) if "--out" in args else Path("fastpath_latency.json")
try:
    runpy.run_path("benchmarks/fastpath_latency.py", run_name="__main__")
finally:
    gpu = collections.defaultdict(list)
    if events:
        torch.cuda.synchronize()
        for key, _, a, b in events:
            gpu[str(key)].append(a.elapsed_time(b))
    by_key = collections.defaultdict(list)
    for r in steps:
        by_key[str(r.get("key"))].append(r)

    def med(v):
        return round(st.median(v), 2) if v else None

    table = []
    for k, rs in sorted(by_key.items(), key=lambda kv: -len(kv[1])):
        table.append({"key (tokens, row, keys, rows)": k, "steps": len(rs), "mean_games": round(st.mean(r.get("games", 0) for r in rs), 2),
                      "mean_real_tokens": round(st.mean(r.get("T", 0) for r in rs), 1),
                      "step_ms_median": med([r["step_ms"] for r in rs]), "gpu_replay_ms_median": med(gpu.get(k, [])),
                      "gpu_replays": len(gpu.get(k, []))})
    multi = [r for r in steps if r.get("games", 1) > 1 and r.get("key")]
    res = {"steps": len(steps), "by_key": table[:40]}
    if multi:
        res["batched"] = {
            "steps": len(multi),
            "mean_games": round(st.mean(r["games"] for r in multi), 2),
            "mean_real_tokens": round(st.mean(r["T"] for r in multi), 1),
            "mean_projection_rows_t_b": round(st.mean(r["key"][0] for r in multi), 1),
            "mean_attention_query_rows": round(st.mean(r["key"][1] * r["key"][3] for r in multi), 1),
            "step_ms_median": med([r["step_ms"] for r in multi]),
            "gpu_replay_ms_median": med([x for k, xs in gpu.items() if k != "None" and not k.endswith(", 1)") for x in xs]),
        }
    singles = [x for k, xs in gpu.items() if k.endswith(", 1)") for x in xs]
    res["single_gpu_replay_ms_median"] = med(singles)
    print(json.dumps(res, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".probe.json").write_text(json.dumps(res, indent=1))
