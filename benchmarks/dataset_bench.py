"""Hot-loop benchmark of data building: games/s from LAION-schema games to tokenized examples.

Runs, on the same games in one process tree:

* ``san_plain``: the plain python-chess conversion a user would write
  (``board.parse_uci`` + ``board.san`` + ``board.push``), one core;
* ``san_replay``: the project's replay (:func:`training.sources.replay_uci`), one core;
* ``tokenize_only``: the project's example tokenization alone (Mistral tokenizer), one core;
* ``build_w1`` / ``build_w2``: the whole ``mistral-chess dataset build`` (read, replay,
  check, examples, tokens, split, parquet) with 1 and 2 worker processes.

Games come from ``--games`` (a folder of LAION parquet files); when it does not exist,
``mistral-chess dataset selfplay`` makes them first (Stockfish at 50 nodes). Each timing
is the best of ``--reps`` (the machine is shared: the best run is the one least
disturbed); the load average before and after is recorded beside it.

    .venv/bin/python benchmarks/dataset_bench.py --out benchmarks/dataset_bench_2core_cpu.json
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", default=str(ROOT / ".cache" / "bench-selfplay"), help="folder of LAION parquet files")
    ap.add_argument("--n-games", type=int, default=2000, help="games to generate when --games does not exist")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--machine", default="2-core CPU dev machine")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dataset_bench_2core_cpu.json"))
    args = ap.parse_args()

    from training.cli import configure_logging
    from training.config import load_dataset_config, load_selfplay_config
    from training.dataset import _Worker, build_dataset, prepare_tokenizer
    from training.selfplay import run_selfplay
    from training.sources import iter_units, replay_uci

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
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "reps": args.reps,
    }
    print(f"{n} games, {plies / n:.1f} plies each; load {res['load_average_before']}", flush=True)

    res["san_plain_games_per_s"] = round(n / best_of(args.reps, lambda: san_plain(games)), 1)
    res["san_replay_games_per_s"] = round(n / best_of(args.reps, lambda: [replay_uci(g) for g in games]), 1)
    print({k: v for k, v in res.items() if k.startswith("san")}, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        common = [f"sources=[{{path: {folder}}}]", "tokenizer=mistral", "overwrite=true"]
        # Tokenization alone, on examples made beforehand.
        tok_dir = prepare_tokenizer("mistral", Path(tmp) / "tok")
        cfg = load_dataset_config(None, [*common, f"out={tmp}/x"])
        worker = _Worker(cfg, str(tok_dir))
        assert worker.tokenizer is not None
        from training.sources import Game, convert

        made = []
        for f in sorted(folder.glob("*.parquet")):
            for unit in iter_units(f, "laion", 512):
                for raw in unit.raw_games():  # type: ignore[union-attr]
                    g = convert(raw, cfg.sources[0])
                    if isinstance(g, Game):
                        made.append(worker.maker.examples(g))

        def tokenize() -> None:
            for exs in made:
                for e in exs:
                    e.input_ids = None
            worker.tokenizer.tokenize(made)  # type: ignore[union-attr]

        res["tokenize_only_games_per_s"] = round(n / best_of(args.reps, tokenize), 1)
        res["examples_per_game"] = round(sum(map(len, made)) / n, 2)
        print({"tokenize_only_games_per_s": res["tokenize_only_games_per_s"]}, flush=True)

        # 1 and 2 workers alternate, so a burst of load from other sessions hits both alike.
        speeds: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.reps):
            for w in (1, 2):
                stats = build_dataset(load_dataset_config(None, [*common, f"out={tmp}/w{w}", f"workers={w}"]), progress_bar=False)
                speeds[w].append(stats["speed"]["games_per_s"])
                res[f"build_w{w}_tokens"] = stats["tokens"]["train"]["total"] + stats["tokens"]["validation"]["total"]
                res[f"build_w{w}_tokenizer_paths"] = {k: stats["tokenizer"][k] for k in ("fast_cut", "direct", "verify_mismatches")}
        for w in (1, 2):
            res[f"build_w{w}_games_per_s_best"] = max(speeds[w])
            res[f"build_w{w}_games_per_s_median"] = statistics.median(speeds[w])
            res[f"build_w{w}_games_per_s_all"] = speeds[w]
            print({k: v for k, v in res.items() if k.startswith(f"build_w{w}_games")}, flush=True)
    res["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    res["target_games_per_s"] = 2000
    res["note"] = (
        "games/s = LAION records in / build seconds (reading, replay into SAN with legality checks, "
        "termination checks, 8 next-move examples per game, Mistral tokenization, split, parquet). "
        "The machine is shared with other sessions: compare the rows of one run, not across runs."
    )
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
