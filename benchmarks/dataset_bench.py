"""Hot-loop benchmark of data building: games/s from LAION-schema games to tokenized examples.

Runs, on the same games in one process tree:

* ``san_plain``: the plain python-chess conversion a user would write
  (``board.parse_uci`` + ``board.san`` + ``board.push``), one core, and the same on two
  cores (two processes, half the games each) -- the baseline beside ``build_w2``;
* ``san_and_push_only``: python-chess's cheapest SAN call (``Board.san_and_push``, no
  legality check, no parsing), one core: the floor of any SAN conversion with python-chess;
* ``san_replay``: the project's replay (:func:`training.sources.replay_uci`: SAN plus the
  legality check of every move), one core;
* ``replay_no_san``: the same replay with no SAN at all (``san_until=0``: every move's
  legality check and push), one core: the ceiling of any python-chess replay, whatever
  SAN costs;
* ``san_pyffish``: when ``pyffish`` (Fairy-Stockfish's C++ binding, ``pip install pyffish``;
  not a project dependency) is installed, its whole-game ``get_san_moves``, one core, with
  every game's SAN compared to python-chess's: the compiled alternative to python-chess SAN;
* ``tokenize_only``: the project's example tokenization alone (Mistral tokenizer), one core;
* ``build_w1`` / ``build_w2``: the whole ``mistral-chess dataset build`` (read, replay,
  check, examples, tokens, split, parquet) with 1 and 2 worker processes.

Games come from ``--games`` (a folder of LAION parquet files); when it does not exist,
``mistral-chess dataset selfplay`` makes them first (Stockfish at 50 nodes). The
machine is shared, so the whole sequence runs ``--runs`` times; each timing of a run is
the best of ``--reps`` (the least disturbed), and the headline figures are the medians
over the runs. The load average before and after every run is recorded beside it.

    .venv/bin/python benchmarks/dataset_bench.py --out benchmarks/results/dataset_bench_2core_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import chess

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_games(folder: Path) -> list[list[str]]:
    import pyarrow.parquet as pq

    games: list[list[str]] = []
    for f in sorted(folder.glob("*.parquet")):
        games += pq.read_table(f, columns=["Moves"]).column("Moves").to_pylist()
    return games


def best_of(reps: int, fn: Any) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def san_plain(games: list[list[str]]) -> None:
    for moves in games:
        board = chess.Board()
        for uci in moves:
            move = board.parse_uci(uci)
            board.san(move)
            board.push(move)


def san_plain_procs(games: list[list[str]], procs: int) -> None:
    """``san_plain`` in ``procs`` forked processes, a slice of the games each."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=san_plain, args=(games[i::procs],)) for i in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def replay_all(games: list[list[str]]) -> None:
    from training.sources import replay_uci

    for moves in games:
        replay_uci(moves)  # results dropped as the build drops its boards (kept, they slow the GC)


def replay_no_san(games: list[list[str]]) -> None:
    from training.sources import replay_uci

    for moves in games:
        replay_uci(moves, san_until=0)


def san_pyffish(games: list[list[str]]) -> None:
    import pyffish

    start = chess.STARTING_FEN
    for moves in games:
        pyffish.get_san_moves("chess", start, moves)


def pyffish_mismatches(games: list[list[str]]) -> int:
    """Games whose pyffish SAN differs from the project's (python-chess's) SAN."""
    import pyffish

    from training.sources import replay_uci

    return sum(pyffish.get_san_moves("chess", chess.STARTING_FEN, m) != replay_uci(m)[0] for m in games)


def san_and_push_only(games: list[list[str]]) -> None:
    for moves in games:
        board = chess.Board()
        for uci in moves:
            board.san_and_push(chess.Move.from_uci(uci))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", default=str(ROOT / ".cache" / "bench-selfplay"), help="folder of LAION parquet files")
    ap.add_argument("--n-games", type=int, default=2000, help="games to generate when --games does not exist")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=2, help="whole measurement sequences; headline = median over runs")
    ap.add_argument("--machine", default="2-core CPU dev machine")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dataset_bench_2core_cpu.json"))
    args = ap.parse_args()

    from training.cli import configure_logging
    from training.config import load_dataset_config, load_selfplay_config
    from training.dataset import _Worker, build_dataset, prepare_tokenizer
    from training.selfplay import run_selfplay
    from training.sources import iter_units

    configure_logging("WARNING")
    folder = Path(args.games)
    if not folder.is_dir():
        run_selfplay(load_selfplay_config(None, [f"out={folder}", f"games={args.n_games}", "nodes=50"]))
    games = load_games(folder)
    n = len(games)
    plies = sum(map(len, games))
    res: dict[str, Any] = {
        "machine": args.machine,
        "cpu": cpu_name(),
        "cores_visible": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "chess": chess.__version__,
        "games": n,
        "mean_plies_per_game": round(plies / n, 1),
        "reps": args.reps,
    }
    print(f"{n} games, {plies / n:.1f} plies each", flush=True)
    try:
        import pyffish

        res["pyffish"] = ".".join(map(str, pyffish.version()))
        res["pyffish_san_mismatching_games"] = pyffish_mismatches(games)
    except ImportError:
        res["pyffish"] = None

    with tempfile.TemporaryDirectory() as tmp:
        common = [f"sources=[{{path: {folder}}}]", "tokenizer=mistral", "overwrite=true"]
        tok_dir = prepare_tokenizer("mistral", Path(tmp) / "tok")
        cfg = load_dataset_config(None, [*common, f"out={tmp}/x"])
        worker = _Worker(cfg, str(tok_dir))
        assert worker.tokenizer is not None
        from training.sources import Game, convert

        made = []  # examples made beforehand, for tokenization alone
        for f in sorted(folder.glob("*.parquet")):
            for unit in iter_units(f, "laion", 512):
                for raw in unit.raw_games():  # type: ignore[union-attr]
                    g = convert(raw, cfg.sources[0])
                    if isinstance(g, Game):
                        made.append(worker.maker.examples(g))
        res["examples_per_game"] = round(sum(map(len, made)) / n, 2)

        def tokenize() -> None:
            for exs in made:
                for e in exs:
                    e.input_ids = None
            worker.tokenizer.tokenize(made)  # type: ignore[union-attr]

        def speed(fn: Any) -> float:
            return round(n / best_of(args.reps, fn), 1)

        runs: list[dict[str, Any]] = []
        for r in range(args.runs):
            one: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
            one["san_plain_games_per_s"] = speed(lambda: san_plain(games))
            one["san_plain_2proc_games_per_s"] = speed(lambda: san_plain_procs(games, 2))
            one["san_and_push_only_games_per_s"] = speed(lambda: san_and_push_only(games))
            one["san_replay_games_per_s"] = speed(lambda: replay_all(games))
            one["replay_no_san_games_per_s"] = speed(lambda: replay_no_san(games))
            if res["pyffish"]:
                one["san_pyffish_games_per_s"] = speed(lambda: san_pyffish(games))
            one["tokenize_only_games_per_s"] = speed(tokenize)
            # 1 and 2 workers alternate, so a burst of load from other sessions hits both alike.
            speeds: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.reps):
                for w in (1, 2):
                    over = [*common, f"out={tmp}/w{w}", f"workers={w}"]
                    stats = build_dataset(load_dataset_config(None, over), progress_bar=False)
                    speeds[w].append(stats["speed"]["games_per_s"])
                    res[f"build_w{w}_tokens"] = stats["tokens"]["train"]["total"] + stats["tokens"]["validation"]["total"]
                    res[f"build_w{w}_tokenizer_paths"] = {
                        k: stats["tokenizer"][k] for k in ("fast_cut", "fast_words", "direct", "verify_mismatches")
                    }
            for w in (1, 2):
                one[f"build_w{w}_games_per_s_best"] = max(speeds[w])
                one[f"build_w{w}_games_per_s_median"] = statistics.median(speeds[w])
                one[f"build_w{w}_games_per_s_all"] = speeds[w]
            one["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            print(f"run {r + 1}:", json.dumps(one), flush=True)
            runs.append(one)
    # Headline: per measurement, the median over runs of each run's figure.
    for key in runs[0]:
        if key.endswith("_games_per_s") or key.endswith("_games_per_s_best") or key.endswith("_games_per_s_median"):
            res[key] = statistics.median(run[key] for run in runs)
    res["runs"] = runs
    res["target_games_per_s"] = 2000
    res["note"] = (
        "games/s = LAION records in / build seconds (reading, replay into SAN with legality checks, "
        "termination checks, 8 next-move examples per game, Mistral tokenization, split, parquet; the "
        "pool's start and the workers' tokenizer loading are included, the one-time conversion of the "
        "Mistral tokenizer to tokenizer.json is not). Headline figures: median over the runs of each "
        "run's best-of-reps (\"_best\") or median-of-reps (\"_median\"). san_plain_2proc is the plain "
        "python-chess conversion on both cores, the baseline for build_w2; replay_no_san (legality "
        "checks and pushes, no SAN) is the ceiling of any python-chess replay; san_pyffish is "
        "Fairy-Stockfish's compiled SAN writer on one core, for comparison. The machine is shared with "
        "other sessions: compare the rows of one run, not across runs."
    )
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
