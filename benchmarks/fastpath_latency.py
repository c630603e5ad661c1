"""Move latency of the fast path over whole games, with the plain recipe in the same run (GPU machine).

A Mistral-7B-shaped model with random weights and a random LoRA adapter (r=16 on
all seven projections), the real Mistral tokenizer, loaded by the engine's own
``load_model`` (NF4, double quant, bf16 compute). Sections, each written to the
JSON as soon as it is done:

``nf4_single``
    One game of ``--plies`` plies, the engine against itself (one Player per side,
    so each side's prompt grows by two plies a move, as in a real game), every move
    chosen by constrained choice over all legal moves through ``Player.choose``
    (prompt building and tokenization included). A first, untimed game with the
    same seed captures the CUDA graphs; the second is timed: median and p95 ms per
    move. Every ``--plain-every`` plies the plain recipe runs on the same prompt:
    ``model.generate`` of 6 tokens (shared/PERFORMANCE.md's baseline) and the old
    engine scorer (``LMScorer.score_plain``); the fast path's log-probabilities are
    compared with the plain scorer's there (max abs difference, same best move).
``nf4_concurrent_processes``
    ``--games`` games at once, each in its own process (a ``RemoteScorer`` that
    tokenizes and builds its candidate trie itself) over one model server
    (``engine.server.ScorerServer`` on the scorer below, in this process): the way
    ``mistral-chess serve`` serves a tournament's engine processes. Measured as
    ``nf4_concurrent``; each client plays a warm run before the timed one.
``nf4_concurrent``
    ``--games`` games at once, one thread per game, over one scorer: moves/s and
    per-move latency against the single game. ``LMScorer.warmup(max_games=N)``
    captures the single-game and batched step shapes first, then a short untimed run
    warms the threads; the JSON says how many graphs were captured in the timed run
    (none is the aim), the games each forward carried and the ratios to one game.
    Batches are pipelined (the scorer's default with enough cache slots: the next
    batch is launched while the device runs the last one).
``nf4_concurrent_unpipelined``
    The same with one batch at a time (``LMScorer(pipeline=False)``), side by side.
``nf4_concurrent_processes_unpipelined`` (``--concurrent processes_unpipelined``)
    Processes over a server whose scorer runs one batch at a time and waits up to
    ``--gather-ms`` for all the games (``LMScorer(gather_games=N)``): every game in one
    step, one dequantization of the NF4 weights for all of them.
``nf4_single_no_kernel``, ``nf4_single_unfused``
    The same timed game without the fused NF4 kernel (engine/nf4gemm.py, which the
    other sections use where a set-up timing finds it faster than dequantize +
    product, up to 128 tokens: the scorer's default), and with the projections run as
    the peft/bitsandbytes modules.
``bf16_single``
    The same game with the bf16 base and the adapter merged into it.
``bf16_concurrent_processes`` (``--bf16-concurrent``)
    ``nf4_concurrent_processes`` on the bf16 model, against ``bf16_single``.

    python benchmarks/fastpath_latency.py --tokenizer .gpu2/tokenizer --out $OUT/fastpath_latency.json

``--tiny`` runs everything on a 2-layer model (CPU or GPU) to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import chess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_latency import make_models  # noqa: E402  (the same random 7B model as engine_latency.py)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return round(s[k], 2)


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 2), "p95_ms": pct(values, 0.95),
            "mean_ms": round(statistics.fmean(values), 2), "max_ms": round(max(values), 2), "n": len(values)}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.cuda = torch.cuda.is_available()
        self.t_start = time.monotonic()
        self.res: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def save(self) -> None:
        self.res["elapsed_s"] = round(self.elapsed(), 1)
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(self.res, indent=1))

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def engine_config() -> Any:
    from engine.config import EngineConfig

    cfg = EngineConfig()
    cfg.search.mode = "constrained"
    cfg.search.temperature = 0.0
    return cfg


def next_board(board: chess.Board, move: chess.Move | None, rng_moves: list[chess.Move]) -> None:
    """Push the move; keep the game going to the ply count: a move that mates or stalemates is
    replaced by another (chosen by the ply, so runs repeat) after which the game can go on for
    two more plies, stepping further back where no move here can (a forced mate)."""
    if move is not None:
        board.push(move)
    while not any(board.legal_moves):
        step_back(board, rng_moves)


def step_back(board: chess.Board, rng_moves: list[chess.Move]) -> None:
    """Replace the last move by one after which the side to move has a reply that does not end
    the game either; where no move of that position has one, replace the move before it."""
    if not board.move_stack:
        raise RuntimeError("no move from the start position keeps the game going")  # cannot happen in chess
    last = board.pop()
    moves = list(board.legal_moves)
    k = len(board.move_stack) % len(moves)
    for m in moves[k:] + moves[:k]:
        if m == last:
            continue
        board.push(m)
        if any(_goes_on(board, r) for r in board.legal_moves):
            rng_moves.append(m)
            return
        board.pop()
    step_back(board, rng_moves)


def _goes_on(board: chess.Board, move: chess.Move) -> bool:
    board.push(move)
    try:
        return any(board.legal_moves)
    finally:
        board.pop()


def play_game(scorer: Any, plies: int, *, on_ply: Any = None) -> tuple[list[float], list[int]]:
    """The engine against itself: per-move ms of Player.choose and the prompt tokens."""
    from engine.player import Player

    players = {chess.WHITE: Player(engine_config(), scorer), chess.BLACK: Player(engine_config(), scorer)}
    board = chess.Board()
    times: list[float] = []
    tokens: list[int] = []
    forced: list[chess.Move] = []
    while board.ply() < plies:
        player = players[board.turn]
        if on_ply is not None:
            on_ply(board, player)
        t = time.perf_counter()
        d = player.choose(board, engine_color=board.turn)
        times.append((time.perf_counter() - t) * 1000)
        assert d.move is not None and d.move in board.legal_moves, d
        tokens.append(d.tokens)
        next_board(board, d.move, forced)
    return times, tokens


def plain_checks(bench: Bench, scorer: Any, model: Any, every: int, reps: int) -> Any:
    """A per-ply hook: plain generate and plain scoring on the prompt, and fast == plain."""
    import torch

    rows: list[dict[str, Any]] = []

    def hook(board: chess.Board, player: Any) -> None:
        if board.ply() % every != 0 or bench.elapsed() > bench.args.budget_s:
            return
        prompt = player.prompt_for(board, engine_color=board.turn)
        sans = [board.san(m) for m in board.legal_moves]
        conts = [prompt.completion(s) for s in sans]
        ids = torch.tensor([scorer.encode(prompt.text, add_special_tokens=prompt.add_special_tokens)],
                           device=next(model.parameters()).device)
        row: dict[str, Any] = {"ply": board.ply(), "legal_moves": len(sans), "prompt_tokens": ids.shape[1]}
        gen_kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones_like(ids))
        with torch.inference_mode():
            model.generate(ids, **gen_kwargs)
            ts = []
            for _ in range(reps):
                bench.sync()
                t = time.perf_counter()
                model.generate(ids, **gen_kwargs)
                bench.sync()
                ts.append((time.perf_counter() - t) * 1000)
        row["plain_generate6_ms"] = round(statistics.median(ts), 1)
        t = time.perf_counter()
        plain = scorer.score_plain(prompt, conts).logprobs
        row["plain_score_ms"] = round((time.perf_counter() - t) * 1000, 1)
        fast = scorer.score(prompt, conts).logprobs
        row["max_abs_logprob_diff"] = round(max(abs(a - b) for a, b in zip(fast, plain, strict=True)), 5)
        bf = max(range(len(fast)), key=fast.__getitem__)
        bp = max(range(len(plain)), key=plain.__getitem__)
        row["same_best_move"] = bf == bp
        row["plain_logprob_gap_of_fast_choice"] = round(plain[bp] - plain[bf], 5)
        rows.append(row)
        print("plain", row, flush=True)

    return hook, rows


def timed(fn: Any, times: list[float], sizes: list[int] | None = None) -> Any:
    """``fn`` wrapped to append each call's milliseconds to ``times`` (and the length of
    its first argument, a batch, to ``sizes``)."""

    def call(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            times.append((time.perf_counter() - t) * 1000)
            if sizes is not None:
                sizes.append(len(a[0]))

    return call


def timed_scores(scorer: Any) -> list[float]:
    """Wrap ``scorer.score`` to record its own time (the rest of a move is the Player's)."""
    times: list[float] = []
    scorer.score = timed(scorer.score, times)
    return times


def timed_steps(scorer: Any, sizes: list[int] | None = None) -> list[float]:
    """Wrap the scorer's batched forward (one call per step, the leader thread's index
    building and result handling included) to record its time (and into ``sizes`` the
    games it carried)."""
    times: list[float] = []
    run = timed(scorer._run_jobs, times, sizes)
    scorer._run_jobs = run
    scorer._batcher._run = run
    return times


def single_section(bench: Bench, name: str, loaded: Any, *, plain: bool, **scorer_kwargs: Any) -> dict[str, Any]:
    from engine.scoring import LMScorer

    args = bench.args
    t = time.perf_counter()
    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=4, **scorer_kwargs)
    out: dict[str, Any] = {"scorer_options": scorer_kwargs, "fast_path": scorer.fast, "fast_reason": scorer.fast_reason,
                           "setup_s": round(time.perf_counter() - t, 1)}
    if scorer.fast_path is not None:
        out["fused_projections"] = scorer.fast_path.fuse_note
        out["nf4_kernel"] = scorer.fast_path.nf4_kernel_note
        scorer.fast_path.time_gpu = True  # stats.gpu_ms: the GPU's own time of each step
    t = time.perf_counter()
    captured = scorer.warmup(max_tokens=256)
    out["warmup_graphs"] = captured
    out["warmup_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    play_game(scorer, args.plies)  # untimed: graphs for shapes warmup() did not cover
    out["warm_game_s"] = round(time.perf_counter() - t, 1)
    scorer.reset_cache()
    hook, rows = plain_checks(bench, scorer, loaded.model, args.plain_every, args.reps) if plain else (None, [])
    score_times = timed_scores(scorer)
    step_times = timed_steps(scorer)
    times, tokens = play_game(scorer, args.plies)
    del scorer._run_jobs
    scorer._batcher._run = scorer._run_jobs
    fast_times = list(times)
    out["per_move"] = summary(fast_times)
    out["scorer_share"] = summary(list(score_times))
    out["forward_share"] = summary(list(step_times))
    del scorer.score  # back to the method (the plain checks below are not timed per move)
    out["moves"] = len(fast_times)
    out["per_move_ms_by_ply"] = [round(x, 2) for x in fast_times]
    # The timed game again, with the plain checks in between moves (they evict nothing
    # the game needs: the scorer has spare cache slots).
    if plain:
        scorer.reset_cache()
        play_game(scorer, args.plies, on_ply=hook)
        out["plain_checks"] = rows
        if rows:
            gen = [r["plain_generate6_ms"] for r in rows]
            out["plain_generate6_median_ms"] = round(statistics.median(gen), 1)
            out["plain_score_median_ms"] = round(statistics.median([r["plain_score_ms"] for r in rows]), 1)
            out["speedup_vs_plain_generate"] = round(statistics.median(gen) / out["per_move"]["median_ms"], 1)
            out["max_abs_logprob_diff"] = max(r["max_abs_logprob_diff"] for r in rows)
            out["same_best_move"] = f"{sum(r['same_best_move'] for r in rows)}/{len(rows)}"
    if bench.cuda:
        import torch

        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    fp = scorer.fast_path
    if fp is not None:
        out["fast_stats"] = dict(vars(fp.stats))
        out["graph_error"] = fp.graph_error
        out["cuda_graphs"] = fp.use_graphs and fp.graph_error is None
        if fp.stats.gpu_timed_steps:
            out["gpu_ms_per_step"] = round(fp.stats.gpu_ms / fp.stats.gpu_timed_steps, 2)
    print(name, {k: v for k, v in out.items() if k not in ("per_move_ms_by_ply", "plain_checks")}, flush=True)
    free(scorer)
    return out


def free(scorer: Any) -> None:
    """Drop a scorer's caches and graphs before the next section (it sits in a reference cycle)."""
    import gc

    import torch

    scorer.fast_path = None
    scorer._batcher = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_launches(scorer: Any, sizes: list[int]) -> tuple[list[float], list[float]]:
    """Pipelined batches: wrap the batcher's launch and finish calls (leader thread) to
    record their times and the games each batch carried."""
    b = scorer._batcher
    launches: list[float] = []
    finishes: list[float] = []
    b._launch, b._finish = timed(b._launch, launches, sizes), timed(b._finish, finishes)
    return launches, finishes


def client_games(sock: str, warm_plies: int, plies: int, warmed: Any, start: Any, results: Any) -> None:
    """One game in its own process, over the model server at ``sock`` (engine.server):
    a warm run, then (once every client is warm and ``start`` is set) the timed one."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from engine.server import RemoteScorer

        remote = RemoteScorer(sock, timeout_s=120)
        play_game(remote, warm_plies)
        warmed.wait()
        start.wait()
        times, _ = play_game(remote, plies)
        results.put(("ok", times))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        import traceback

        results.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        try:
            warmed.abort()
        except Exception:  # noqa: BLE001
            pass


def run_processes(scorer: Any, n: int, warm_plies: int, plies: int, between: Any) -> tuple[float, float, list[float]]:
    """``n`` client processes (spawned: the parent holds CUDA) over a model server on
    ``scorer``; ``between()`` runs once all are warm, before the timed run starts.
    Returns (warm run s, timed wall s, every move's ms)."""
    import multiprocessing

    from engine.server import ScorerServer

    ctx = multiprocessing.get_context("spawn")
    sock = f"/tmp/fastpath-bench-{os.getpid()}.sock"
    warmed, start, results = ctx.Barrier(n + 1), ctx.Event(), ctx.Queue()
    with ScorerServer(scorer, sock).start():
        t = time.perf_counter()
        procs = [ctx.Process(target=client_games, args=(sock, warm_plies, plies, warmed, start, results))
                 for _ in range(n)]
        for p in procs:
            p.start()
        try:
            warmed.wait(timeout=600)
        except threading.BrokenBarrierError:
            pass
        warm_s = time.perf_counter() - t
        if warmed.broken:
            errors = [r[1] for r in (results.get(timeout=5) for _ in range(results.qsize())) if r[0] == "error"]
            for p in procs:
                p.terminate()
            raise RuntimeError(f"a client failed: {errors[:1]}")
        between()
        t = time.perf_counter()
        start.set()
        times: list[float] = []
        for _ in range(n):
            kind, value = results.get(timeout=900)
            if kind == "error":
                raise RuntimeError(f"a client failed: {value}")
            times.extend(value)
        wall = time.perf_counter() - t
        for p in procs:
            p.join(timeout=60)
    return warm_s, wall, times


def concurrent_section(bench: Bench, loaded: Any, single_median: float, single_moves_per_s: float,
                       *, pipeline: bool = True, processes: bool = False, gather_all: bool = False) -> dict[str, Any]:
    from engine.scoring import LMScorer

    args = bench.args
    n = args.games
    graphs = True if args.cpu_graph_layout else None
    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=2 * n + 2, max_batch=n,
                      gather_ms=args.gather_ms, cuda_graphs=graphs, pipeline=pipeline,
                      gather_games=n if gather_all else 0)

    def run_all(plies: int) -> tuple[float, list[float]]:
        per: list[list[float]] = [[] for _ in range(n)]
        errors: list[BaseException] = []

        def one(g: int) -> None:
            try:
                per[g], _ = play_game(scorer, plies)
            except BaseException as exc:  # noqa: BLE001 - reported
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(g,)) for g in range(n)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        if errors:
            raise errors[0]
        return wall, [x for p in per for x in p]

    fp = scorer.fast_path
    t = time.perf_counter()
    # The graphs of single-game and batched step shapes, captured before any game.
    warmup_graphs = scorer.warmup(max_tokens=256, max_games=n)
    warmup_s = time.perf_counter() - t
    captured_0 = fp.stats.graphs_captured if fp is not None else 0
    # Sixteen threads run Python between their moves; each torch call of the thread
    # running a step gives up the GIL, and with the default 5 ms switch interval taking
    # it back can cost that much every time. A server of many games sets it lower.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    warm_plies = min(args.plies, 16)
    sizes: list[int] = []
    launches: list[float] = []
    finishes: list[float] = []
    step_times: list[float] = []
    marks: dict[str, Any] = {}

    def before_timed() -> None:
        nonlocal launches, finishes, step_times
        scorer.reset_cache()
        marks["captured_1"] = fp.stats.graphs_captured if fp is not None else 0
        if fp is not None:
            fp.time_gpu = True
            marks["gpu0"] = (fp.stats.gpu_ms, fp.stats.gpu_timed_steps)
        marks["b0"] = (scorer._batcher.batches, scorer._batcher.items, scorer._batcher.overlapped)
        if scorer.pipelined:
            launches, finishes = timed_launches(scorer, sizes)
        else:
            step_times = timed_steps(scorer, sizes)

    if processes:
        warm_wall, wall, times = run_processes(scorer, n, warm_plies, args.plies, before_timed)
    else:
        warm_wall, _ = run_all(warm_plies)  # untimed: threads, tokenizer and caches warm
        before_timed()
        wall, times = run_all(args.plies)
    sys.setswitchinterval(switch_interval)
    captured_1 = marks["captured_1"]
    b0 = marks["b0"]
    captured_2 = fp.stats.graphs_captured if fp is not None else 0
    batches = scorer._batcher.batches - b0[0]
    items = scorer._batcher.items - b0[1]
    out: dict[str, Any] = {
        "games": n,
        "games_in": "processes over a model server (engine.server)" if processes else "threads of one process",
        "pipelined": scorer.pipelined,
        "gather_ms": args.gather_ms,
        "gather_games": scorer._batcher.gather_items,
        "switch_interval_ms": args.switch_interval_ms,
        "warmup_graphs": warmup_graphs,
        "warmup_s": round(warmup_s, 1),
        "warm_run_plies": warm_plies,
        "warm_run_s": round(warm_wall, 1),
        "graphs_captured_in_warm_run": captured_1 - captured_0,
        "graphs_captured_in_timed_run": captured_2 - captured_1,
        "games_per_forward_histogram": {str(k): sizes.count(k) for k in sorted(set(sizes))},
        "wall_s": round(wall, 2),
        "moves": len(times),
        "moves_per_s": round(len(times) / wall, 1),
        "per_move": summary(times),
        "mean_games_per_forward": round(items / max(batches, 1), 2),
        **({"launch_ms": summary(launches), "finish_ms": summary(finishes),
            "leader_busy_share": round((sum(launches) + sum(finishes)) / 1000 / wall, 3),
            "batches_launched_beside_a_running_one": scorer._batcher.overlapped - b0[2]}
           if scorer.pipelined else
           {"forward_ms": summary(step_times), "forward_busy_share": round(sum(step_times) / 1000 / wall, 3)}),
        "single_game_moves_per_s": round(single_moves_per_s, 1),
        "throughput_vs_single": round(len(times) / wall / single_moves_per_s, 2),
        "latency_vs_single": round(statistics.median(times) / single_median, 2),
    }
    if fp is not None:
        out["fast_stats"] = dict(vars(fp.stats))
        out["graph_error"] = fp.graph_error
        out["graph_shapes"] = fp.graph_shapes
        gpu0 = marks["gpu0"]
        gpu_ms, timed = fp.stats.gpu_ms - gpu0[0], fp.stats.gpu_timed_steps - gpu0[1]
        if timed:
            # the GPU's own time of the timed run's steps over its wall time: near 1 is
            # device-bound, well below 1 is waiting for the host
            out["gpu_busy_share"] = round(gpu_ms / 1000 / wall, 3)
            out["gpu_ms_per_step"] = round(gpu_ms / timed, 2)
    if bench.cuda:
        import torch

        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    print("concurrent" + ("_processes" if processes else "") + ("" if pipeline else "_unpipelined"), out, flush=True)
    free(scorer)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--work", default=Path("/tmp/fastpath-bench"), type=Path)
    ap.add_argument("--out", default=Path(os.environ.get("OUT", ".")) / "fastpath_latency.json", type=Path)
    ap.add_argument("--plies", type=int, default=150)
    ap.add_argument("--games", type=int, default=16)
    ap.add_argument("--plain-every", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--gather-ms", type=float, default=3.0)
    ap.add_argument("--switch-interval-ms", type=float, default=0.5,
                    help="Python's thread switch interval during the concurrent section (default 5 ms is Python's)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip what is left past this (the job has 9 minutes)")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--skip-variants", action="store_true",
                    help="skip the NF4 single-game variants (no kernel, unfused): a shorter run")
    ap.add_argument("--concurrent", default="processes,threads,unpipelined",
                    help="the NF4 concurrent sections to run, of processes,threads,unpipelined,processes_unpipelined "
                         "(empty: none)")
    ap.add_argument("--bf16-concurrent", action="store_true",
                    help="also 16 games in processes over a model server on the bf16 model (bf16_concurrent_processes)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--cpu-graph-layout", action="store_true",
                    help="concurrent section on a CPU: run the CUDA-graph layout eagerly (counts shapes)")
    args = ap.parse_args()

    import torch
    import transformers
    from loguru import logger

    from engine.config import ModelConfig
    from engine.model import load_model

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    bench = Bench(args)
    versions: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                                "python": platform.python_version()}
    for pkg in ("peft", "bitsandbytes"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except ImportError:
            versions[pkg] = None
    bench.res.update({
        "what": "fast-path move latency over whole games vs the plain recipe, Mistral-7B-shaped random weights "
                "+ random LoRA r=16 (all linears), real tokenizer" + (" [TINY CHECK RUN]" if args.tiny else ""),
        "gpu": torch.cuda.get_device_name() if bench.cuda else None,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "versions": versions,
        "plies": args.plies,
        "targets": {"median_ms_max": 15, "speedup_vs_generate_min": 25, "concurrent_throughput_min": 8,
                    "concurrent_latency_max": 2},
    })
    t = time.perf_counter()
    base, adapter = make_models(args.work, args.tokenizer, tiny=args.tiny)
    bench.res["make_models_s"] = round(time.perf_counter() - t, 1)
    bench.save()

    quant = "nf4" if bench.cuda else "none"
    t = time.perf_counter()
    loaded = load_model(ModelConfig(path=str(base), adapter=str(adapter), quantization=quant))
    bench.res["nf4_load_s"] = round(time.perf_counter() - t, 1)
    bench.res["nf4_quantization"] = loaded.quantization
    single = single_section(bench, "nf4_single", loaded, plain=True)
    bench.res["nf4_single"] = single
    bench.save()

    kinds = [k for k in args.concurrent.split(",") if k]
    unknown = set(kinds) - {"processes", "threads", "unpipelined", "processes_unpipelined"}
    if unknown:
        raise SystemExit(f"--concurrent: unknown section(s) {sorted(unknown)}")
    sections = {"processes": ("nf4_concurrent_processes", {"processes": True}),
                "threads": ("nf4_concurrent", {}),
                "unpipelined": ("nf4_concurrent_unpipelined", {"pipeline": False}),
                "processes_unpipelined": ("nf4_concurrent_processes_unpipelined",
                                          {"processes": True, "pipeline": False, "gather_all": True})}
    moves_per_s = single["moves"] / (sum(single["per_move_ms_by_ply"]) / 1000)
    for kind in kinds:
        name, kwargs = sections[kind]
        if bench.elapsed() < args.budget_s * 0.6 and args.games > 1:
            # each game in its own process over a model server (engine.server), in threads,
            # and in threads with one batch at a time (before pipelining), side by side
            bench.res[name] = concurrent_section(bench, loaded, single["per_move"]["median_ms"], moves_per_s, **kwargs)
        else:
            bench.res[name] = "skipped: time budget"
        bench.save()
    # The same game without the fused NF4 kernel (dequantize + product) and with the
    # projections as peft/bitsandbytes modules: which kernels pay, measured side by side.
    for name, kwargs in (("nf4_single_no_kernel", {"nf4_kernel_rows": 0}),
                         ("nf4_single_unfused", {"fuse_linears": False})):
        if args.skip_variants:
            bench.res[name] = "skipped (--skip-variants)"
        elif bench.elapsed() < args.budget_s * 0.7:
            bench.res[name] = single_section(bench, name, loaded, plain=False, **kwargs)
            bench.save()
        else:
            bench.res[name] = "skipped: time budget"

    del loaded
    if bench.cuda:
        torch.cuda.empty_cache()
    if args.skip_bf16 or bench.elapsed() > args.budget_s:
        bench.res["bf16_single"] = "skipped" + ("" if args.skip_bf16 else ": time budget")
    else:
        t = time.perf_counter()
        loaded = load_model(ModelConfig(path=str(base), adapter=str(adapter), quantization="none",
                                        dtype="bfloat16"))
        loaded.model = loaded.model.merge_and_unload()  # bf16: merging the adapter is exact up to rounding
        bench.res["bf16_load_and_merge_s"] = round(time.perf_counter() - t, 1)
        bench.res["bf16_single"] = single_section(bench, "bf16_single", loaded, plain=True)
        bench.save()
        b = bench.res["bf16_single"]
        if args.bf16_concurrent and args.games > 1 and bench.elapsed() < args.budget_s:
            bench.res["bf16_concurrent_processes"] = concurrent_section(
                bench, loaded, b["per_move"]["median_ms"], b["moves"] / (sum(b["per_move_ms_by_ply"]) / 1000),
                processes=True)
    bench.save()
    s = bench.res["nf4_single"]
    verdict = {
        "nf4_median_ms": s["per_move"]["median_ms"],
        "nf4_p95_ms": s["per_move"]["p95_ms"],
        "nf4_speedup_vs_plain_generate": s.get("speedup_vs_plain_generate"),
        "nf4_max_abs_logprob_diff": s.get("max_abs_logprob_diff"),
    }
    for name in ("nf4_single_no_kernel", "nf4_single_unfused"):
        sec = bench.res.get(name)
        if isinstance(sec, dict):
            verdict[f"{name}_median_ms"] = sec["per_move"]["median_ms"]
    for name, key in (("nf4_concurrent_processes", "concurrent_processes"), ("nf4_concurrent", "concurrent_threads"),
                      ("nf4_concurrent_processes_unpipelined", "concurrent_processes_unpipelined")):
        c = bench.res.get(name)
        if isinstance(c, dict):
            verdict[f"{key}_throughput_vs_single"] = c["throughput_vs_single"]
            verdict[f"{key}_latency_vs_single"] = c["latency_vs_single"]
    b = bench.res.get("bf16_single")
    if isinstance(b, dict):
        verdict["bf16_median_ms"] = b["per_move"]["median_ms"]
        verdict["bf16_speedup_vs_plain_generate"] = b.get("speedup_vs_plain_generate")
    c = bench.res.get("bf16_concurrent_processes")
    if isinstance(c, dict):
        verdict["bf16_concurrent_processes_throughput_vs_single"] = c["throughput_vs_single"]
        verdict["bf16_concurrent_processes_latency_vs_single"] = c["latency_vs_single"]
    bench.res["summary"] = verdict
    bench.save()
    print(json.dumps(verdict, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
