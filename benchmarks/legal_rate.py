"""Free-generation legal-move rate of one or more models on the same held-out positions.

The trainer's own evaluation (``training.evaluation.generation_metrics``: greedy
``generate`` of a few tokens after the PGN prompt, read by the engine's move parser, no
retry and no fallback) on the ``eval`` positions of a data set built by
``mistral-chess dataset build`` (a seeded pick spread over its validation games), so
that models trained on different sets are compared on positions none of them saw.

    python benchmarks/legal_rate.py --data DATA --positions 1024 \\
        --model v3=OLD_DIR --model v4=engine/data/bundled-model --json OUT.json

``--breakdown`` adds, for each model, why its illegal outputs are illegal
(``training.evaluation.classify_output``: a piece that cannot reach the square, a pinned
piece, a move that ignores check, ...), the legal rate by the position's ply within its
board window (plies since the prompt's ``[FEN]``, or since the start without one) and
the first ``--examples`` illegal outputs with their positions.

With two models or more, ``paired`` in the JSON compares every pair on the same positions:
the positions only one of the two answers legally, and the exact McNemar p-value of that split.

``--exclude-games SRC`` (repeatable: packed ``.mcg`` or LAION parquet files, or folders)
leaves out the positions whose game occurs, move for move, in those sources: a held-out set
played with the training sets' recipe shares their book games (docs/training.md,
"Duplicates"), so pass the games the models trained on to measure on unseen games only. The
positions' source files (the data set's ``game`` column) must still be readable.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_FEN_TAG = re.compile(r'\[FEN "([^"]+)"\]')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a data set folder (with eval or validation positions)")
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--template", default="pgn-base")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--breakdown", action="store_true", help="classify illegal outputs; legal rate by ply in window")
    ap.add_argument("--examples", type=int, default=40, help="illegal outputs listed with --breakdown")
    ap.add_argument(
        "--exclude-games", action="append", default=[], metavar="SRC",
        help="leave out positions from games found in SRC (.mcg / parquet / folder; repeatable)",
    )  # fmt: skip
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from engine.int8store import load_causal_lm
    from engine.prompt import PromptTemplate
    from training.data import load_eval_positions
    from training.evaluation import generation_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    positions = load_eval_positions(args.data, args.positions)
    if not positions:
        raise SystemExit(f"{args.data}: no held-out positions (build it with `mistral-chess dataset build`)")
    excluded = 0
    if args.exclude_games:
        picked = len(positions)
        try:
            positions = unseen_positions(positions, args.exclude_games)
        except (OSError, ValueError) as exc:  # DataError is a ValueError
            raise SystemExit(f"--exclude-games: {exc}") from None
        excluded = picked - len(positions)
        print(f"--exclude-games: {excluded} of {picked} positions come from those games; {len(positions)} left",
              flush=True)  # fmt: skip
        if not positions:
            raise SystemExit("--exclude-games: every position comes from those games")
    add = PromptTemplate.load(args.template).kind == "base"
    res: dict[str, object] = {
        "what": "free-generation legal-move rate (greedy generate, engine parser, no fallback)",
        "data": args.data,
        "positions": len(positions),
        "excluded_games": args.exclude_games,
        "excluded_positions": excluded,
        "max_new_tokens": args.max_new_tokens,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "models": {},
    }
    legal_by_model: dict[str, list[bool]] = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--model {spec!r}: give NAME=DIR")
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = load_causal_lm(path, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the user's path
            raise SystemExit(f"--model {spec!r}: cannot load a model and tokenizer from {path!r}: {exc}") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        t = time.perf_counter()
        outputs: list[str] = []
        m: dict[str, object] = dict(generation_metrics(
            model, tok, positions, device=torch.device("cpu"), max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, add_special_tokens=add, outputs=outputs,
        ))  # fmt: skip
        m["seconds"] = round(time.perf_counter() - t, 1)
        m["path"] = path
        kinds = output_classes(positions, outputs)
        legal_by_model[name] = [k == "legal" for k in kinds]
        if args.breakdown:
            m.update(breakdown(positions, outputs, kinds, args.examples))
        res["models"][name] = m  # type: ignore[index]
        print(name, json.dumps(m), flush=True)
    if len(legal_by_model) > 1:
        res["paired"] = paired(legal_by_model)
        for row in res["paired"]:  # type: ignore[attr-defined]
            print(f"paired {row['a']} vs {row['b']}: only {row['a']} legal {row['only_a']}, only {row['b']} legal "
                  f"{row['only_b']}, McNemar p = {row['mcnemar_p']}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def unseen_positions(positions: list, sources: list[str]) -> list:
    """``positions`` less those whose game (its ``game`` location, ``file:index`` of the LAION
    parquet or packed ``.mcg`` file the data set was built from) occurs in ``sources``
    (training.packgames.seen_games)."""
    from training.errors import DataError
    from training.packgames import game_files, game_keys, packed_header, seen_games

    slow = [p.name for p in game_files(sources) if p.suffix == ".mcg" and packed_header(p)["version"] == 1]
    if slow:
        # version 2 records are their game keys; version 1 games are replayed (about 1 ms a game)
        print(f"--exclude-games: {', '.join(slow)} are packed as version 1: every game is replayed to compare "
              "it (minutes a set); a version 2 copy (the newest in the history, gpu_carry.sh --games --pack) "
              "is read in seconds", file=sys.stderr, flush=True)  # fmt: skip
    seen = seen_games(sources)
    keys_of: dict[str, list[bytes | None]] = {}  # a source file's games, by index
    kept = []
    for pos in positions:
        path, _, index = pos.game.rpartition(":")
        if not path or not index.isdigit():
            raise DataError(f"position without a source game ({pos.game!r}): rebuild the data set")
        if path not in keys_of:
            if not Path(path).is_file():
                raise DataError(f"{path}: the source of the data set's games is gone (needed to compare games)")
            keys_of[path] = game_keys(Path(path))
        if keys_of[path][int(index)] not in seen:
            kept.append(pos)
    return kept


def output_classes(positions: list, outputs: list[str]) -> list[str]:
    """For each position, the class of the model's output (``training.evaluation.classify_output``,
    the engine's parser: ``legal``, or why the move is illegal)."""
    import chess

    from training.evaluation import classify_output

    return [classify_output(chess.Board(p.fen), " " + text) for p, text in zip(positions, outputs, strict=True)]


def paired(legal: dict[str, list[bool]]) -> list[dict[str, object]]:
    """Every pair of models on the same positions: how many each answers legally where the other
    does not, and the exact two-sided McNemar p-value of that split (a binomial test on the
    positions where they differ). Paired, so it sees a gap that two separate rates with
    intervals of about +-0.8 points on 1,700 positions would not."""
    names = list(legal)
    rows: list[dict[str, object]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if len(legal[a]) != len(legal[b]):
                raise ValueError(f"{a} and {b} were measured on different positions")
            only_a = sum(x and not y for x, y in zip(legal[a], legal[b], strict=True))
            only_b = sum(y and not x for x, y in zip(legal[a], legal[b], strict=True))
            n = only_a + only_b
            k = min(only_a, only_b)
            # P(X <= k) for X ~ Binomial(n, 1/2), doubled (capped at 1): the exact two-sided test.
            tail = sum(math.comb(n, j) for j in range(k + 1)) / 2**n if n else 1.0
            rows.append({"a": a, "b": b, "positions": len(legal[a]), "both_legal": sum(
                x and y for x, y in zip(legal[a], legal[b], strict=True)), "only_a": only_a, "only_b": only_b,
                "mcnemar_p": round(min(1.0, 2 * tail), 5)})  # fmt: skip
    return rows


def window_ply(prompt: str, fen: str) -> int:
    """Plies from the prompt's first position (its ``[FEN]`` tag, else the standard start)
    to ``fen``, the position the model answers in."""
    import chess

    tag = _FEN_TAG.search(prompt)
    root = chess.Board(tag.group(1)) if tag else chess.Board()
    board = chess.Board(fen)
    return (board.fullmove_number - root.fullmove_number) * 2 + (board.turn == chess.BLACK) - (root.turn == chess.BLACK)


def breakdown(positions: list, outputs: list[str], kinds: list[str], examples: int) -> dict[str, object]:
    """Classes of the outputs (``kinds``, from :func:`output_classes`), legal rate by ply in
    window, the first illegal examples."""
    import collections

    from training.evaluation import OUTPUT_CLASSES

    classes: collections.Counter[str] = collections.Counter()
    by_ply: dict[int, list[int]] = {}
    listed: list[dict[str, object]] = []
    for pos, text, kind in zip(positions, outputs, kinds, strict=True):
        classes[kind] += 1
        ply = window_ply(pos.prompt, pos.fen)
        row = by_ply.setdefault(ply, [0, 0])
        row[0] += 1
        row[1] += kind == "legal"
        if kind != "legal" and len(listed) < examples:
            listed.append({"fen": pos.fen, "ply_in_window": ply, "output": text, "class": kind, "played": pos.completion})
    return {
        "classes": {k: classes[k] for k in OUTPUT_CLASSES if classes[k]},
        "by_ply_in_window": {
            str(p): {"positions": n, "legal_rate": round(ok / n, 4)} for p, (n, ok) in sorted(by_ply.items())
        },
        "illegal_examples": listed,
    }


if __name__ == "__main__":
    raise SystemExit(main())
