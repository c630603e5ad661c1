"""How good the moves are that the engine's constrained choice picks, judged by Stockfish.

For held-out positions of self-play games (one a game, a seeded ply from 8 to 119, from the
games a data set build puts in validation: ``split_of`` with the builds' fraction and seed,
so no model trained on that set saw them), Stockfish scores every legal move (``multipv``
over all of them, ``--nodes`` a position); each *view* (a model folder and engine overrides,
such as another ``prompt.window_offset`` or ``prompt.result``) scores every legal move as
the engine's ``constrained`` mode does (the prompt the engine writes, the log-probability
of each move's SAN), and its move is the best-scored one. Per view: the mean centipawn loss
against Stockfish's best move (capped at 1,000), blunders (a loss of 200 or more), how often
it picks Stockfish's best move, and the paired difference from the first view (the evaluation
after its move minus the first view's, clipped at +-1,500, with its standard error).
*Ensembles* add the views' log-probabilities (each normalized over the legal moves) and
pick the best sum.

    python benchmarks/move_quality.py --games DIR --positions 600 \\
        --view "bundled=engine/data/bundled-model" \\
        --view "offset8=engine/data/bundled-model prompt.window_offset=8" \\
        --ensemble "bundled+offset8=bundled+offset8" --json OUT.json

A view is ``NAME=DIR`` and any engine overrides after it (``key=value``, as ``mistral-chess
uci`` takes them); one model is loaded per folder. A proxy, not a match: it sees single
moves, not games. It runs on a CPU (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CP_CAP = 1000  # a loss larger than this counts as this much (mates, lost pieces alike)
EVAL_CLIP = 1500  # evaluations compared between views are clipped to +-this
BLUNDER = 200


def parse_view(text: str) -> tuple[str, str, list[str]]:
    words = shlex.split(text)
    if not words or "=" not in words[0]:
        raise SystemExit(f"--view {text!r}: give NAME=DIR and then any key=value engine overrides")
    name, _, folder = words[0].partition("=")
    if not name or not folder:
        raise SystemExit(f"--view {text!r}: NAME and DIR must not be empty")
    for w in words[1:]:
        if "=" not in w:
            raise SystemExit(f"--view {text!r}: {w!r} is not a key=value override")
    return name, folder, words[1:]


def parse_ensemble(text: str, views: list[str]) -> tuple[str, list[str]]:
    name, sep, members = text.partition("=")
    parts = [m for m in members.split("+") if m]
    if not sep or not name or len(parts) < 2:
        raise SystemExit(f"--ensemble {text!r}: give NAME=VIEW+VIEW[+...]")
    unknown = [m for m in parts if m not in views]
    if unknown:
        raise SystemExit(f"--ensemble {text!r}: no view named {', '.join(unknown)} (views: {', '.join(views)})")
    return name, parts


def held_out_positions(
    folder: str, count: int, seed: int, fraction: float, split_seed: int, exclude: set[bytes] | None = None
) -> list[list[str]]:
    """The UCI moves before each chosen position: one position a validation game. ``exclude``
    (``training.packgames.game_key`` values, e.g. ``seen_games`` of the training sets): the same
    pick less the positions of those games."""
    import chess
    import pyarrow.parquet as pq

    from training.examples import split_of
    from training.sources import moves_key

    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise SystemExit(f"{folder}: no parquet files (a LAION-schema games folder, e.g. from `dataset selfplay`)")
    rng = random.Random(seed)
    out: list[tuple[list[str], list[str]]] = []  # (the moves before the position, the whole game)
    for f in files:
        for moves in pq.read_table(f, columns=["Moves"]).column("Moves").to_pylist():
            if len(moves) < 12:
                continue
            if fraction > 0 and split_of(moves_key(chess.STARTING_FEN, moves), fraction, split_seed) != "validation":
                continue
            out.append((list(moves[: rng.randrange(8, min(len(moves), 120))]), moves))
    rng.shuffle(out)
    picked = out[:count]
    if exclude:
        from training.packgames import game_key

        picked = [(before, game) for before, game in picked if game_key(game) not in exclude]
    return [before for before, _ in picked]


def normalized(logps: list[float]) -> list[float]:
    m = max(logps)
    z = m + math.log(sum(math.exp(x - m) for x in logps))
    return [x - z for x in logps]


def summary(picks: list[int], cps: list[list[int]], base: list[int] | None) -> dict[str, Any]:
    losses = [min(max(c) - c[i], CP_CAP) for i, c in zip(picks, cps, strict=True)]
    evals = [max(min(c[i], EVAL_CLIP), -EVAL_CLIP) for i, c in zip(picks, cps, strict=True)]
    out: dict[str, Any] = {
        "mean_cp_loss": round(statistics.mean(losses), 1),
        "blunders": sum(x >= BLUNDER for x in losses),
        "best_move": sum(c[i] == max(c) for i, c in zip(picks, cps, strict=True)),
    }
    if base is not None:
        base_evals = [max(min(c[i], EVAL_CLIP), -EVAL_CLIP) for i, c in zip(base, cps, strict=True)]
        diff = [a - b for a, b in zip(evals, base_evals, strict=True)]
        out["vs_first_mean_cp"] = round(statistics.mean(diff), 1)
        out["vs_first_se_cp"] = round(statistics.stdev(diff) / math.sqrt(len(diff)), 1) if len(diff) > 1 else None
        out["vs_first_same_move"] = sum(a == b for a, b in zip(picks, base, strict=True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", required=True, help="a folder of LAION-schema parquet games (Moves in UCI)")
    ap.add_argument("--view", action="append", required=True, help='"NAME=DIR [key=value ...]" (repeatable)')
    ap.add_argument("--ensemble", action="append", default=[], help="NAME=VIEW+VIEW[+...] (repeatable)")
    ap.add_argument("--positions", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11, help="which positions")
    ap.add_argument("--validation-fraction", type=float, default=0.02,
                    help="positions only from the games a build with this split puts in validation (0: any game)")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=200_000, help="Stockfish nodes a position (multipv over all moves)")
    ap.add_argument("--stockfish", default=shutil.which("stockfish") or "/usr/games/stockfish")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--exclude-games", action="append", default=[], metavar="SRC",
        help="leave out the picked positions whose game occurs in SRC (.mcg / parquet / folder; repeatable)",
    )  # fmt: skip
    args = ap.parse_args()

    views = [parse_view(v) for v in args.view]
    names = [v[0] for v in views]
    if len(set(names)) != len(names):
        raise SystemExit("--view names must differ")
    ensembles = [parse_ensemble(e, names) for e in args.ensemble]
    if not Path(args.stockfish).is_file():
        raise SystemExit(f"no Stockfish at {args.stockfish} (--stockfish PATH)")

    import chess
    import chess.engine
    import torch

    from engine.config import load_engine_config
    from engine.player import Player
    from engine.prompt import legal_sans
    from engine.uci import load_scorer

    torch.set_num_threads(args.threads)
    exclude = None
    if args.exclude_games:
        from training.packgames import seen_games

        try:
            exclude = seen_games(args.exclude_games)
        except (OSError, ValueError) as exc:  # DataError is a ValueError
            raise SystemExit(f"--exclude-games: {exc}") from None
    games = held_out_positions(
        args.games, args.positions, args.seed, args.validation_fraction, args.split_seed, exclude
    )
    if not games:
        raise SystemExit(f"{args.games}: no held-out games (try --validation-fraction 0)")
    scorers: dict[str, Any] = {}
    players = []
    for name, folder, overrides in views:
        cfg = load_engine_config(None, [f"model.path={folder}", f"model.threads={args.threads}", *overrides])
        if folder not in scorers:
            scorers[folder] = load_scorer(cfg)
        players.append((name, Player(cfg, scorers[folder])))

    sf = chess.engine.SimpleEngine.popen_uci(args.stockfish)
    sf.configure({"Threads": 1, "Hash": 64})
    cps: list[list[int]] = []
    logps: dict[str, list[list[float]]] = {n: [] for n in names}
    t0 = time.time()
    try:
        for k, moves in enumerate(games):
            board = chess.Board()
            for m in moves:
                board.push_uci(m)
            legal = list(board.legal_moves)
            if len(legal) < 2 or board.is_game_over():
                continue
            infos = sf.analyse(board, chess.engine.Limit(nodes=args.nodes), multipv=len(legal))
            by_move = {i["pv"][0]: i["score"].relative.score(mate_score=10_000) for i in infos if i.get("pv")}
            if any(m not in by_move for m in legal):
                continue  # Stockfish did not score every move (it should with multipv = all)
            sans = legal_sans(board, legal)
            for name, player in players:
                prompt = player.prompt_for(board)
                scores = player.scorer.score(prompt, [prompt.completion(s) for s in sans])
                logps[name].append(scores.logprobs)
            cps.append([by_move[m] for m in legal])
            if (k + 1) % 100 == 0:
                print(f"{k + 1} positions, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        sf.quit()

    picks = {n: [max(range(len(lp)), key=lp.__getitem__) for lp in logps[n]] for n in names}
    for name, members in ensembles:
        sums = [[sum(v) for v in zip(*(normalized(logps[m][j]) for m in members), strict=True)] for j in range(len(cps))]
        picks[name] = [max(range(len(s)), key=s.__getitem__) for s in sums]
    base = picks[names[0]]
    results = {n: summary(p, cps, None if n == names[0] else base) for n, p in picks.items()}
    out = {
        "benchmark": "move_quality",
        "positions": len(cps),
        "games": args.games,
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "excluded_games": args.exclude_games,
        "stockfish_nodes": args.nodes,
        "views": [{"name": n, "model": f, "overrides": o} for n, f, o in views],
        "ensembles": [{"name": n, "views": m} for n, m in ensembles],
        "results": results,
        "seconds": round(time.time() - t0, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": args.threads},
    }
    width = max(len(n) for n in results)
    for n, r in results.items():
        line = f"{n:{width}s}  cp loss {r['mean_cp_loss']:6.1f}  blunders {r['blunders']:4d}  best {r['best_move']:4d}"
        if "vs_first_mean_cp" in r:
            line += f"  vs {names[0]}: {r['vs_first_mean_cp']:+6.1f} (se {r['vs_first_se_cp']})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
