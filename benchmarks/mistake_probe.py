"""What the mistakes of a self-play set with ``mistake_rate`` are, judged by Stockfish.

The mistakes of a set are not marked in its games; they are found again as the self-play
code made them: each game's own stream (``training.selfplay.move_mistakes``) replayed over
its moves after the opening says which plies were mistakes. For each such ply (up to
``--mistakes``, games in order) Stockfish analyses the position before it at ``--nodes``
(one search gives its best move and score), and the position after the mistake at the same
budget; the loss is the score before minus the score after, from
the mover's side, capped at 1,000 centipawns (mates count as 1,000). Reported: how often the
mistake is Stockfish's own best move at that budget (then it is no mistake at all), the mean
and median loss of the others, and the share of blunders (a loss of 200 or more); and the same
for as many of the set's other moves after the opening (every tenth; the set's own budget), the
baseline the mistakes add to.

    python benchmarks/mistake_probe.py --games datasets/selfplay-360 --mistakes 400 --json OUT.json

The set's ``selfplay_config.yaml`` gives the seed, the opening settings and the rate; a set
without mistakes is an error. A proxy at a small budget: Stockfish at ``--nodes`` is the judge.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import chess
import chess.engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.config import SelfPlayConfig, load_selfplay_config  # noqa: E402
from training.selfplay import (  # noqa: E402
    chunk_name,
    draw_mistake,
    find_stockfish,
    finished_chunks,
    load_book,
    move_mistakes,
    opening_moves,
)

CAP = 1000


def mistake_positions(
    folder: Path, cfg: SelfPlayConfig, limit: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(FEN before, move UCI) of the first ``limit`` mistakes of the set's games, in game order,
    and as many of the budget's own moves after the opening (every tenth), for comparison."""
    import pyarrow.parquet as pq

    book = load_book(cfg)
    mistakes: list[tuple[str, str]] = []
    budget: list[tuple[str, str]] = []
    seen = 0
    for first, end in finished_chunks(folder):
        for index, moves in enumerate(
            pq.read_table(folder / chunk_name(first, end)).column("Moves").to_pylist(), first
        ):
            n_open = len(opening_moves(cfg, index, book))
            board = chess.Board()
            for uci in moves[:n_open]:
                board.push_uci(uci)
            stream = move_mistakes(cfg, index)
            for uci in moves[n_open:]:
                if draw_mistake(stream, cfg, board)[0]:
                    if len(mistakes) < limit:
                        mistakes.append((board.fen(), uci))
                else:
                    seen += 1
                    if seen % 10 == 0 and len(budget) < limit:
                        budget.append((board.fen(), uci))
                if len(mistakes) >= limit and len(budget) >= limit:
                    return mistakes, budget
                board.push_uci(uci)
    return mistakes, budget


def judge(sf: Any, positions: list[tuple[str, str]], limit: Any) -> dict[str, Any]:
    """How the moves compare with the judge's best: same move, losses of the others."""
    same = 0
    losses: list[int] = []
    for fen, uci in positions:
        board = chess.Board(fen)
        me = board.turn
        before = sf.analyse(board, limit)
        best = before.get("pv", [None])[0]
        if best is not None and best.uci() == uci:
            same += 1
            continue
        board.push_uci(uci)
        if board.is_checkmate():  # the move mated: the mover's best score
            after_cp = CAP
        elif board.is_game_over(claim_draw=True):
            after_cp = 0
        else:
            after_cp = score_cp(sf.analyse(board, limit), me)
        losses.append(max(0, score_cp(before, me) - after_cp))
    return {
        "moves": len(positions),
        "same_as_judge_best": same,
        "other": len(losses),
        "mean_loss_cp_of_other": round(statistics.fmean(losses), 1) if losses else None,
        "median_loss_cp_of_other": statistics.median(losses) if losses else None,
        "mean_loss_cp_of_all": round(sum(losses) / len(positions), 1) if positions else None,
        "blunders_200cp": sum(x >= 200 for x in losses),
    }


def score_cp(info: Any, colour: chess.Color) -> int:
    score = info["score"].pov(colour)
    return max(-CAP, min(CAP, score.score(mate_score=CAP)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", required=True, type=Path, help="a self-play folder made with mistake_rate > 0")
    ap.add_argument(
        "--mistakes", type=int, default=400, help="mistakes to judge (the first ones, in game order)"
    )
    ap.add_argument("--nodes", type=int, default=20000, help="Stockfish's budget a position as the judge")
    ap.add_argument("--stockfish", default="")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cfg_file = args.games / "selfplay_config.yaml"
    if not cfg_file.is_file():
        ap.error(f"{args.games}: no selfplay_config.yaml (not a self-play folder)")
    cfg = load_selfplay_config(cfg_file)
    if not cfg.mistake_rate:
        ap.error(f"{args.games} was played without mistakes (mistake_rate 0)")
    t0 = time.perf_counter()
    mistakes, budget = mistake_positions(args.games, cfg, args.mistakes)
    if not mistakes:
        ap.error(f"{args.games}: no mistakes found (no finished chunks?)")
    with chess.engine.SimpleEngine.popen_uci(find_stockfish(args.stockfish)) as sf:
        limit = chess.engine.Limit(nodes=args.nodes)
        judged = {"mistakes": judge(sf, mistakes, limit), "budget_moves": judge(sf, budget, limit)}
    result = {
        "what": "the mistakes of a self-play set (mistake_rate), judged by Stockfish, beside the budget's own moves",
        "games": str(args.games),
        "mistake_rate": cfg.mistake_rate,
        "mistake_nodes": cfg.mistake_nodes,
        "set_nodes": cfg.nodes,
        "judge_nodes": args.nodes,
        **judged,
        "cap_cp": CAP,
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
